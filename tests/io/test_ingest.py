"""Ingest: frames to the consumer, ticks at the consumer's deadlines while ``recv()`` blocks.

A test track blocks in ``recv()`` as aiortc's ``RemoteStreamTrack`` does; the consumers are small
closures, and at the end the real ``MicPipeline`` (Failure B: frames stop, the turn still ends).
"""

from __future__ import annotations

import asyncio
import time

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from workbench.core.params import TurnParams
from workbench.core.pipeline import MicPipeline
from workbench.core.sender import Outgoing
from workbench.io.ingest import Received, ingest
from workbench.io.webrtc import mono_frame


class QueueTrack(MediaStreamTrack):
    """A track fed by the test, blocking in recv() like aiortc's RemoteStreamTrack; None ends it."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.queue: asyncio.Queue[av.AudioFrame | None] = asyncio.Queue()

    async def recv(self) -> av.AudioFrame:
        frame = await self.queue.get()
        if frame is None:
            raise MediaStreamError
        return frame

    def feed(self, value: int, pts: int) -> None:
        self.queue.put_nowait(mono_frame(np.full(960, value, np.int16), pts))


def test_ticks_at_the_deadline_while_recv_blocks_and_loses_no_frame() -> None:
    async def run() -> tuple[list[tuple[str, float, int]], int]:
        track = QueueTrack()
        log: list[tuple[str, float, int]] = []
        last = [time.monotonic()]

        def on_frame(r: Received) -> None:
            last[0] = r.t
            log.append(("frame", r.t, int(r.samples[0])))

        def on_tick(t: float) -> None:
            last[0] = t
            log.append(("tick", t, 0))

        async def feed() -> None:
            for i in range(3):
                await asyncio.sleep(0.013)
                track.feed(i + 1, i * 960)
            await asyncio.sleep(0.2)  # a gap: only ticks, one per 30 ms the consumer asks for
            track.feed(9, 30 * 960)
            track.queue.put_nowait(None)

        feeder = asyncio.create_task(feed())
        n = await ingest(track, time.monotonic, on_frame, on_tick, lambda: last[0] + 0.03)
        await feeder
        return log, n

    log, n = asyncio.run(run())
    assert n == 4 and [v for k, _, v in log if k == "frame"] == [1, 2, 3, 9]
    assert all(b[1] >= a[1] for a, b in zip(log, log[1:], strict=False))  # one clock, in order
    kinds = [k for k, _, _ in log]
    assert kinds[:3] == ["frame"] * 3  # frames 13 ms apart come before the 30 ms deadline: no tick between
    ticks = [t for k, t, _ in log if k == "tick"]
    gap_ticks = [t for t in ticks if log[2][1] < t < log[-1][1]]
    assert 4 <= len(gap_ticks) <= 8  # ~200 ms / 30 ms
    assert np.diff([log[2][1], *gap_ticks]).min() >= 0.029  # never before the deadline


def test_a_nearer_deadline_rearms_the_timer() -> None:
    """The deadline after a frame comes sooner than the one armed before it (a turn ends in 1 s, a gap in 50 ms)."""

    async def run() -> tuple[float, list[float]]:
        track = QueueTrack()
        ticks: list[float] = []
        due: list[float | None] = [None]
        t0 = time.monotonic()

        def on_frame(r: Received) -> None:
            due[0] = r.t + 0.05

        def on_tick(t: float) -> None:
            ticks.append(t)
            due[0] = None  # done: nothing more is due

        due[0] = t0 + 1.0
        task = asyncio.create_task(ingest(track, time.monotonic, on_frame, on_tick, lambda: due[0]))
        await asyncio.sleep(0.02)
        track.feed(1, 0)
        await asyncio.sleep(0.25)
        track.queue.put_nowait(None)
        await task
        return t0, ticks

    t0, ticks = asyncio.run(run())
    assert len(ticks) == 1 and ticks[0] - t0 == pytest.approx(0.07, abs=0.03)


def test_a_consumer_that_does_not_act_does_not_spin_the_loop() -> None:
    async def run() -> int:
        track = QueueTrack()
        ticks: list[float] = []
        stuck = time.monotonic()  # always due, never moved by the tick
        task = asyncio.create_task(ingest(track, time.monotonic, lambda _r: None, ticks.append, lambda: stuck))
        await asyncio.sleep(0.1)
        track.queue.put_nowait(None)
        await task
        return len(ticks)

    assert asyncio.run(run()) <= 110  # at most one a millisecond


def test_an_error_in_a_tick_ends_ingest_with_it() -> None:
    async def run() -> None:
        track = QueueTrack()

        def on_tick(_t: float) -> None:
            raise RuntimeError("disk full")

        await asyncio.wait_for(ingest(track, time.monotonic, lambda _r: None, on_tick, lambda: 0.0), 2)

    with pytest.raises(RuntimeError, match="disk full"):
        asyncio.run(run())


def test_an_error_in_a_frame_ends_ingest_with_it() -> None:
    async def run() -> None:
        track = QueueTrack()
        track.feed(1, 0)

        def on_frame(_r: Received) -> None:
            raise ValueError("bad frame")

        await asyncio.wait_for(ingest(track, time.monotonic, on_frame), 2)

    with pytest.raises(ValueError, match="bad frame"):
        asyncio.run(run())


def test_cancelling_ingest_leaves_no_timer_behind() -> None:
    async def run() -> list[float]:
        track = QueueTrack()
        ticks: list[float] = []
        task = asyncio.create_task(ingest(track, time.monotonic, lambda _r: None, ticks.append,
                                          lambda: time.monotonic() + 0.05))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.1)  # a timer left armed would tick now
        return ticks

    assert asyncio.run(run()) == []


def test_the_pipeline_ends_a_turn_on_the_clock_when_frames_stop() -> None:
    """Failure B through ingest: speech, then recv() blocks for good; ActivityEnd still comes, on time."""

    async def run() -> tuple[list[tuple[float, str]], float]:
        track = QueueTrack()
        pipe = MicPipeline(TurnParams(silence_ms=300))
        out: list[tuple[float, str]] = []
        t0 = time.monotonic()

        def clock() -> float:
            return time.monotonic() - t0

        def collect(outputs: list) -> None:
            out.extend((clock(), o.msg) for o in outputs if isinstance(o, Outgoing))

        task = asyncio.create_task(ingest(track, clock, lambda r: collect(pipe.frame(r.t, r.pts_s, r.samples)),
                                          lambda t: collect(pipe.tick(t)), pipe.next_deadline))
        tone = (np.sin(np.arange(960) / 960 * 2 * np.pi * 20) * 8000).astype(np.int16)
        for i in range(25):  # 0.5 s of speech at real pace
            track.queue.put_nowait(mono_frame(tone, i * 960))
            stopped = clock()
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.6)  # no frame at all from here on
        task.cancel()
        return out, stopped

    out, stopped = asyncio.run(run())
    msgs = [m for _, m in out]
    assert msgs[0] == "activity_start" and msgs[-1] == "activity_end" and "audio" in msgs
    end_t = out[-1][0]
    # the 300 ms silence window, measured on the clock from the end of the last frame's audio
    assert 0.25 <= end_t - stopped < 0.45


# -- straight from the decoder (workbench.io.loopdecode) -----------------------------------------------------------


def _link_frames(direct: bool, fail_at: int | None = None) -> tuple[list[Received], BaseException | None, int]:
    """Play 1 s of tone over a real loopback link (Opus decoded on the loop) and ingest it."""
    from workbench.io.loopdecode import decoder_of
    from workbench.io.media import FilePlayerTrack
    from workbench.io.webrtc import loopback

    tone = (np.sin(np.arange(48_000) / 48_000 * 2 * np.pi * 440) * 8000).astype(np.int16)

    async def run() -> tuple[list[Received], BaseException | None, int]:
        link = await loopback(FilePlayerTrack(tone, tail_s=0.1))
        frames: list[Received] = []
        error: BaseException | None = None

        def on_frame(r: Received) -> None:
            if fail_at is not None and len(frames) == fail_at:
                raise RuntimeError("pipeline broke")
            frames.append(r)

        try:
            await asyncio.wait_for(ingest(link.remote_track, time.monotonic, on_frame, direct=direct), 10)
        except RuntimeError as exc:
            error = exc
        decoded = decoder_of(link.remote_track).frames
        await link.close()
        return frames, error, decoded

    return asyncio.run(run())


def test_frames_straight_from_the_decoder_are_the_frames_recv_returns() -> None:
    direct, _, decoded = _link_frames(direct=True)
    queued, _, _ = _link_frames(direct=False)
    assert len(direct) == decoded >= 45 and abs(len(direct) - len(queued)) <= 2  # ingest saw the track end both ways
    assert np.allclose(np.diff([f.pts_s for f in direct]), 0.02)
    assert [f.pts_s for f in direct[:40]] == [f.pts_s for f in queued[:40]]
    assert all(np.array_equal(a.samples, b.samples) for a, b in zip(direct[:40], queued[:40], strict=True))


def test_an_error_in_a_frame_from_the_decoder_ends_ingest_not_aiortc() -> None:
    frames, error, decoded = _link_frames(direct=True, fail_at=10)
    assert isinstance(error, RuntimeError) and "pipeline broke" in str(error)
    assert len(frames) == 10 and decoded >= 10  # the link itself closed cleanly afterwards (no hang, no traceback)


def test_the_browser_servers_hangup_track_takes_frames_straight_from_the_decoder_and_ends_at_hangup() -> None:
    """``serve`` wraps the browser's track in a HangupTrack; the frames must still bypass recv() (no tasks per
    frame), and a hang-up must end ingest at once with nothing delivered after it."""
    from workbench.io.loopdecode import decoder_of
    from workbench.io.media import FilePlayerTrack, HangupTrack
    from workbench.io.webrtc import loopback

    tone = (np.sin(np.arange(96_000) / 48_000 * 2 * np.pi * 440) * 8000).astype(np.int16)

    async def run() -> tuple[int, bool, int, bool]:
        link = await loopback(FilePlayerTrack(tone, tail_s=0.1))
        mic = HangupTrack(link.remote_track)
        decoder = decoder_of(link.remote_track)
        assert decoder is not None and decoder_of(mic) is decoder
        frames: list[Received] = []
        straight = True

        def on_frame(r: Received) -> None:
            nonlocal straight
            straight &= decoder.sink is not None  # delivered by the decoder, not by a recv() of the wrapper
            frames.append(r)
            if len(frames) == 25:
                mic.hangup()

        n = await asyncio.wait_for(ingest(mic, time.monotonic, on_frame), 10)
        at_return = len(frames)
        await asyncio.sleep(0.2)  # ten more frames' time: none may arrive after the hang-up
        detached = decoder.sink is None
        await link.close()
        return n, straight, len(frames) - at_return, detached

    n, straight, after, detached = asyncio.run(run())
    assert straight and detached
    assert 25 <= n <= 27 and after == 0
