"""No speech lost at the end of a turn: under DTX the jitter buffer's held tail is released and sent before ActivityEnd.

A real aiortc loopback link with Opus DTX (``FilePlayerTrack(dtx=True)``: no packets at all in digital silence)
carries three tone bursts into ``ingest`` -> ``MicPipeline``, the bridge's mic side.  The true end of each burst
is read from the source signal (its last non-zero sample); the sent audio of each activity is what ``SendOrder``
put between ActivityStart and ActivityEnd, placed in source time by its media time.  With the release the sent
audio reaches the true end (within 30 ms: the last frame's 20 ms and the codec); with aiortc's behaviour alone
(``release_s=None``) each turn's last ~80 ms stay in the jitter buffer until the next burst and are dropped.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from workbench.core.params import TurnParams
from workbench.core.pipeline import MicPipeline
from workbench.core.sender import Outgoing
from workbench.io.ingest import Received, ingest
from workbench.io.media import FilePlayerTrack
from workbench.io.webrtc import loopback

RATE = 48_000
OUT_RATE = 16_000
BURSTS_S = (0.61, 0.53, 0.67)  # not whole frames: the true end falls inside a frame
GAP_S = 0.9
PARAMS = TurnParams(silence_ms=300, min_speech_ms=60, pre_roll_ms=100)


def source() -> tuple[np.ndarray, list[float]]:
    """Three amplitude-modulated tone bursts (speech-like envelope) with digital silence between; true ends, s."""
    parts: list[np.ndarray] = []
    ends: list[float] = []
    n = 0
    for length in BURSTS_S:
        t = np.arange(int(length * RATE)) / RATE
        burst = (np.sin(2 * np.pi * 300 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)) * 12000).astype(np.int16)
        parts += [burst, np.zeros(int(GAP_S * RATE), np.int16)]
        nz = np.flatnonzero(burst)
        ends.append((n + nz[-1] + 1) / RATE)
        n += burst.size + int(GAP_S * RATE)
    return np.concatenate(parts), ends


async def sent_turns(audio: np.ndarray, release_s: float | None) -> tuple[list[tuple[float, float]], list[Received]]:
    """Play ``audio`` with DTX into the mic pipeline; per activity, (start, end) of its sent audio in source time."""
    link = await loopback(FilePlayerTrack(audio, dtx=True, tail_s=0.5))
    pipe = MicPipeline(PARAMS)
    t0 = time.monotonic()
    clock = lambda: time.monotonic() - t0  # noqa: E731
    outs: list[Outgoing] = []
    frames: list[Received] = []

    def take(items: list) -> None:
        outs.extend(o for o in items if isinstance(o, Outgoing))

    def on_frame(r: Received) -> None:
        frames.append(r)
        take(pipe.frame(r.t, r.pts_s, r.samples))

    try:
        await asyncio.wait_for(ingest(link.remote_track, clock, on_frame, lambda t: take(pipe.tick(t)),
                                      pipe.next_deadline, release_s=release_s), audio.size / RATE + 10)
        take(pipe.finish(clock()))
    finally:
        await link.close()
    assert pipe.media_offset is not None
    turns: list[tuple[float, float]] = []
    start = end = None
    for o in outs:
        if o.msg == "activity_start":
            start = end = None
        elif o.msg == "audio":
            assert o.media_t is not None and o.audio is not None
            a = o.media_t - pipe.media_offset
            start = a if start is None else start
            end = a + o.audio.size / OUT_RATE
        elif o.msg == "activity_end":
            assert start is not None and end is not None
            turns.append((start, end))
    return turns, frames


def test_the_turn_tail_held_by_the_jitter_buffer_is_sent_before_activity_end() -> None:
    audio, true_ends = source()

    async def both() -> tuple:
        return await asyncio.gather(sent_turns(audio, release_s=0.05), sent_turns(audio, release_s=None))

    (released, frames), (held, _) = asyncio.run(both())
    # pts 0 is the first packet, which is the first sample of the source (it starts with sound)
    assert len(released) == len(held) == 3
    for (_, end), true_end in zip(released, true_ends, strict=True):
        assert abs(end - true_end) <= 0.03, (end, true_end)
    # aiortc alone: every turn but the last ends ~80 ms early (the last one's tail comes out at the end of the track,
    # when the receiver stops, also after its ActivityEnd)
    for (_, end), true_end in zip(held, true_ends, strict=True):
        assert true_end - end > 0.05, (end, true_end)
    # the released frames are the tail, delivered before the next burst: every frame of a burst's end arrives
    # less than ~150 ms after the frame before it (release_s + the decode), never a gap's length later
    pts = np.array([f.pts_s for f in frames])
    t = np.array([f.t for f in frames])
    assert np.all(np.diff(pts) > 0)
    for true_end in true_ends:
        last = np.flatnonzero(pts < true_end)[-1]
        assert t[last] - t[last - 4] < 0.15


def test_sparse_packets_in_silence_come_out_one_by_one() -> None:
    """Chrome's DTX sends a packet every ~400 ms in silence.  Once the jitter buffer is released it is empty and
    would keep each of them until 4 more came (1.6 s); the release follows packets too, so each comes out ~50 ms
    after it arrived, and frame gaps keep the sender's pattern."""
    frame = 960
    audio = np.zeros(int(3.0 * RATE), np.int16)
    t = np.arange(int(0.3 * RATE)) / RATE
    audio[: t.size] = (np.sin(2 * np.pi * 300 * t) * 8000).astype(np.int16)  # a burst, then sparse packets
    for k in range(1, 7):
        i = int((0.3 + 0.4 * k) * RATE) // frame * frame
        audio[i : i + frame] = 300  # one sounding 20 ms frame every 400 ms
    frames: list[Received] = []

    async def run() -> None:
        link = await loopback(FilePlayerTrack(audio, dtx=True, tail_s=0.3))
        try:
            await asyncio.wait_for(ingest(link.remote_track, time.monotonic, frames.append), 10)
        finally:
            await link.close()

    asyncio.run(run())
    t_arr = np.array([f.t for f in frames])
    assert len(frames) >= 15 + 6 - 1  # the burst and the sparse frames (the last may end with the track)
    assert np.diff(t_arr).max() < 0.6  # ~400 ms apart, as sent; held 4 at a time they would be 1.6 s apart
