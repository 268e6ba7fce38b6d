"""The mic pipeline with exact timestamps: no sockets, no sleeps."""

import math

import numpy as np
import pytest

from workbench.core.events import FrameGap, Vad
from workbench.core.params import TurnParams
from workbench.core.pipeline import MicPipeline
from workbench.core.sender import Outgoing

RATE = 48_000
FRAME_S = 0.02
TICK_S = 0.01


def speech_frame(i, amp=8000):
    t = (np.arange(960) + i * 960) / RATE
    return (np.sin(2 * np.pi * 220 * t) * amp * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))).astype(np.int16)


def run(frames, ticks_to, params=None, tick_s=0.01):
    """frames: list of (arrival, pts, samples); ticks every tick_s up to ticks_to."""
    p = MicPipeline(params or TurnParams())
    out = []
    k = 0
    for arrival, pts, x in frames:
        while k * tick_s < arrival:
            out += p.tick(k * tick_s)
            k += 1
        out += p.frame(arrival, pts, x)
    while k * tick_s <= ticks_to:
        out += p.tick(k * tick_s)
        k += 1
    return p, out


def msgs(out):
    return [o.msg for o in out if isinstance(o, Outgoing) and o.msg != "audio"]


def test_activity_end_fires_on_the_clock_when_frames_stop():
    # 1 s of speech (pts 0-1 s, each frame arriving 20 ms after its pts), then the sender stops sending (DTX):
    # no frame ever arrives again.
    frames = [(0.02 * (i + 1), 0.02 * i, speech_frame(i)) for i in range(50)]
    p, out = run(frames, ticks_to=3.0, tick_s=TICK_S)
    assert msgs(out) == ["activity_start", "activity_end"]
    # Expected times from the input alone: media time goes onto the session clock by the first frame's arrival,
    # so speech starts at 0.02 s and ends with the last frame, at 1.02 s; the turn ends at the first tick that
    # finds the silence window over (no frame comes to end it).
    clock_of_media = frames[0][0] - frames[0][1]
    speech_start = frames[0][1] + clock_of_media
    speech_end = frames[-1][1] + FRAME_S + clock_of_media
    due = speech_end + TurnParams().silence_ms / 1000
    first_tick_due = math.ceil(round(due / TICK_S, 6)) * TICK_S
    start = next(o for o in out if isinstance(o, Vad) and o.decision == "speech_start")
    end = next(o for o in out if isinstance(o, Vad) and o.decision == "speech_end")
    assert start.media_t == pytest.approx(speech_start, abs=1e-6)
    assert end.media_t == pytest.approx(speech_end, abs=1e-6)
    assert end.t == pytest.approx(first_tick_due, abs=1e-6)
    # ActivityEnd goes out with the decision, after every sample of the turn (the soxr tail flushed at the gap)
    sent = [o for o in out if isinstance(o, Outgoing)]
    assert sent[-1].msg == "activity_end" and sent[-1].media_t == pytest.approx(speech_end, abs=1e-6)
    assert not p.detector.turn_open


def test_every_audio_message_is_inside_an_activity_and_tail_is_flushed_before_end():
    frames = [(0.02 * (i + 1), 0.02 * i, speech_frame(i)) for i in range(50)]
    _, out = run(frames, ticks_to=3.0)
    seq = [o for o in out if isinstance(o, Outgoing)]
    assert seq[0].msg == "activity_start" and seq[-1].msg == "activity_end"
    assert all(o.msg == "audio" for o in seq[1:-1])
    sent = sum(o.audio.size for o in seq if o.msg == "audio")
    # all 1 s of speech (minus at most the onset before pre-roll) reached the writer, tail included
    assert sent >= 16_000 - 320


def test_gap_is_recorded_and_late_resume_starts_a_new_turn():
    frames = [(0.02 * (i + 1), 0.02 * i, speech_frame(i)) for i in range(25)]
    frames += [(3.0 + 0.02 * j, 2.98 + 0.02 * j, speech_frame(j)) for j in range(25)]
    _, out = run(frames, ticks_to=5.0)
    gaps = [o for o in out if isinstance(o, FrameGap)]
    assert len(gaps) == 1 and gaps[0].gap_s > 2.4
    assert msgs(out) == ["activity_start", "activity_end"] * 2


def test_media_time_re_anchors_when_the_sender_clock_stood_still():
    # replaceTrack(null) for 1.5 s: no packets, and pts resumes where it stopped.
    frames = [(0.02 * (i + 1), 0.02 * i, speech_frame(i)) for i in range(50)]
    frames += [(2.5 + 0.02 * j, 1.0 + 0.02 * j, speech_frame(j)) for j in range(100)]
    p, out = run(frames, ticks_to=6.0)
    assert p.reanchors == 1
    ends = [o for o in out if isinstance(o, Vad) and o.decision == "speech_end"]
    starts = [o for o in out if isinstance(o, Vad) and o.decision == "speech_start"]
    # two real turns, the second lasting the 2 s it was spoken, not a burst of tiny turns
    assert len(starts) == len(ends) == 2
    assert ends[1].media_t - starts[1].media_t > 1.5


def test_a_short_stale_tail_does_not_re_anchor():
    # the jitter buffer releases 80 ms of old audio 1 s late, then on-time frames follow
    frames = [(0.02 * (i + 1), 0.02 * i, speech_frame(i)) for i in range(20)]
    frames += [(1.4 + 0.001 * k, 0.40 + 0.02 * k, speech_frame(k)) for k in range(4)]
    frames += [(1.42 + 0.02 * j, 1.40 + 0.02 * j, speech_frame(j)) for j in range(30)]
    p, _ = run(frames, ticks_to=3.0)
    assert p.reanchors == 0


def test_the_naive_frame_count_detector_keeps_the_send_order_in_step():
    """``--naive frame-count`` swaps the detector, not the send order: its mistake (no end while frames stop) must
    come through its own decisions, never through a start while open or an end with none (those raise now)."""
    from workbench.io.naive import FrameCountDetector

    p = MicPipeline(TurnParams(silence_ms=300))
    p.detector = FrameCountDetector(p.params)
    out = []
    i = 0
    for _turn in range(3):  # speech, then silent frames (counted: the turn ends), then speech again
        for _ in range(30):
            out += p.frame(0.02 * (i + 1), 0.02 * i, speech_frame(i))
            i += 1
        for _ in range(25):
            out += p.frame(0.02 * (i + 1), 0.02 * i, np.zeros(960, np.int16))
            i += 1
    for _ in range(30):  # the last turn's frames stop: only the clock moves, and the naive detector ignores it
        out += p.frame(0.02 * (i + 1), 0.02 * i, speech_frame(i))
        i += 1
    out += p.tick(60.0) + p.finish(61.0)
    assert msgs(out) == ["activity_start", "activity_end"] * 3 + ["activity_start"]  # Failure B: no last end
