"""``workbench serve``'s barge-in: the agent's voice to the browser stops at once when the answer is interrupted.

The serve side's own pieces on a real aiortc loopback link: the outgoing ``ModelAudioTrack`` is sent to a
receiving peer (Opus, aiortc's jitter buffer), and ``BrowserSession.event`` (what the recorder hands every
event) gets the interruption: first a ``serverContent.interrupted`` message parsed by the SDK's own types and
turned into events by ``live.server_events``, as the bridge does, then the client core's ``Client`` decision
``interrupted``.  Each answer is a tone of its own pitch queued all at once (the server sends faster than real
time).  After an interruption, at most ``N_FRAMES`` received frames may still carry the old answer (what was
in flight: the frame being sent and the receiver's jitter buffer, ~5); after them nothing of it, only silence
until the next answer, which plays.  The time it takes is measured by bench/bench_bargein.py, not asserted here.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
from aiortc import RTCPeerConnection
from google.genai import types

from workbench.core.events import Client
from workbench.core.pcm import MIC_RATE, MODEL_RATE
from workbench.io import live
from workbench.io.ingest import Received, ingest
from workbench.io.media import IDLE_FRAMES, ModelAudioTrack
from workbench.io.webrtc import FRAME_S, loopback
from workbench.ui.web.server import BrowserSession

N_FRAMES = 10  # 200 ms of frames: the in-flight frame, the receiver's 4-frame prefetch, and margin
ANSWERS_HZ = (600.0, 900.0, 1300.0)
SILENT_RMS = 150.0  # -47 dBFS: Opus's decay of a stopped tone is below this after its first frame


def answer(hz: float, seconds: float = 3.0) -> np.ndarray:
    t = np.arange(int(seconds * MODEL_RATE)) / MODEL_RATE
    return (np.sin(2 * np.pi * hz * t) * 10000).astype(np.int16)


def pitch(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / MIC_RATE)[np.argmax(spec)])


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


async def _run(tmp: Path) -> tuple[list[Received], list[int]]:
    voice = ModelAudioTrack()
    link = await loopback(voice, loop_encode=True)  # as serve sends it
    pc = RTCPeerConnection()
    session = BrowserSession(id="1", name="test", dir=tmp, pc=pc, voice=voice, options={})
    frames: list[Received] = []
    marks: list[int] = []  # index of the first frame received after each interruption / new answer
    task = asyncio.create_task(ingest(link.remote_track, time.monotonic, frames.append))

    async def heard(n: int) -> None:  # wait until n more frames arrived
        target = len(frames) + n
        while len(frames) < target:
            await asyncio.sleep(0.01)

    try:
        session.model_audio(answer(ANSWERS_HZ[0]))
        await heard(30)  # the first answer is playing
        msg = types.LiveServerMessage.model_validate({"serverContent": {"interrupted": True}})
        marks.append(len(frames))
        for ev in live.server_events(msg, 1.0):
            session.event(ev)
        await heard(20)
        marks.append(len(frames))
        session.model_audio(answer(ANSWERS_HZ[1]))
        await heard(30)
        marks.append(len(frames))
        session.event(Client(t=2.0, action="interrupted", reason="barge_in", turn=2))
        await heard(20)
        marks.append(len(frames))
        session.model_audio(answer(ANSWERS_HZ[2], 0.5))
        await heard(30)
    finally:
        task.cancel()
        await link.close()
        await pc.close()
    return frames, marks


def test_an_interrupted_answer_stops_on_the_outgoing_track_and_the_next_one_plays(tmp_path: Path) -> None:
    frames, (cut1, next1, cut2, next2) = asyncio.run(_run(tmp_path))
    loud = [i for i, f in enumerate(frames) if rms(f.samples) > 1000]

    def pitches(lo: int, hi: int) -> list[float]:
        return [pitch(frames[i].samples) for i in loud if lo <= i < hi]

    # each answer was heard before its interruption, at its own pitch
    assert pitches(0, cut1)[-10:] and all(abs(p - ANSWERS_HZ[0]) < 30 for p in pitches(0, cut1)[-10:])
    assert pitches(next1, cut2)[-10:] and all(abs(p - ANSWERS_HZ[1]) < 30 for p in pitches(next1, cut2)[-10:])
    # N frames after each interruption: silence, until the next answer is queued
    for cut, nxt in ((cut1, next1), (cut2, next2)):
        after = [rms(f.samples) for f in frames[cut + N_FRAMES : nxt]]
        assert after and max(after) < SILENT_RMS, (cut, nxt, max(after, default=None))
    # nothing of an interrupted answer ever again: the next answers' loud frames are theirs alone
    assert all(abs(p - ANSWERS_HZ[1]) < 30 for p in pitches(next1 + N_FRAMES, cut2))
    last = pitches(next2 + N_FRAMES, len(frames))
    assert last and all(abs(p - ANSWERS_HZ[2]) < 30 for p in last)


async def _run_pause() -> tuple[list[Received], float]:
    voice = ModelAudioTrack()
    link = await loopback(voice, loop_encode=True)
    frames: list[Received] = []
    task = asyncio.create_task(ingest(link.remote_track, time.monotonic, frames.append))
    try:
        voice.push(answer(ANSWERS_HZ[0], 0.3))
        await asyncio.sleep(0.3 + (IDLE_FRAMES + 25) * FRAME_S)  # the hangover, then 0.5 s of nothing
        t_second = time.monotonic()
        voice.push(answer(ANSWERS_HZ[1], 0.5))
        await asyncio.sleep(0.8)
    finally:
        task.cancel()
        await link.close()
    return frames, t_second


def test_the_voice_goes_quiet_in_long_silence_and_comes_back_on_time() -> None:
    frames, t_second = asyncio.run(_run_pause())
    gaps = [(a, b) for a, b in zip(frames, frames[1:], strict=False) if b.t - a.t > 0.3]
    assert len(gaps) == 1  # nothing on the wire after the hangover, until the next answer
    before, after = gaps[0]
    assert before.t < t_second <= after.t + 0.05
    # the pause is in the RTP timestamps too: media time moved on by the pause, as it does under a browser's DTX
    assert after.pts_s - before.pts_s == pytest.approx(after.t - before.t, abs=0.1)
    second = [f for f in frames if f.t > t_second and rms(f.samples) > 1000]
    # (its first and last frame carry what the track's resampler held back at the end of the answer before them)
    assert len(second) >= 15 and all(abs(pitch(f.samples) - ANSWERS_HZ[1]) < 30 for f in second[1:-1])
    # the first answer played out and its hangover of silence followed it on the wire
    first = [f for f in frames if f.t < t_second]
    assert sum(rms(f.samples) > 1000 for f in first) >= 12
    assert all(rms(f.samples) < SILENT_RMS for f in first[-IDLE_FRAMES + 10:])
