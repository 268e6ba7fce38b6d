"""Decoding on the event loop: the same frames as aiortc's decoder thread, the track still ends, errors are kept."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import numpy as np
import pytest
from aiortc import RTCRtpCodecParameters
from aiortc.codecs.opus import OpusEncoder
from aiortc.jitterbuffer import JitterFrame
from conftest import tone

from workbench.io.ingest import Received, ingest
from workbench.io.loopdecode import LoopDecoder, decode_on_loop
from workbench.io.media import FilePlayerTrack
from workbench.io.webrtc import loopback, mono_frame

RATE = 48_000
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48_000, channels=2, payloadType=111)


def tone48k(seconds: float) -> np.ndarray:
    return tone(seconds, -15.26, 440.0, rate=RATE, dtype=np.int16)  # peak 8000


def encoded(samples: np.ndarray) -> list[JitterFrame]:
    enc = OpusEncoder()
    out = []
    for i in range(0, samples.size - 959, 960):
        payloads, ts = enc.encode(mono_frame(samples[i:i + 960], i))
        out += [JitterFrame(data=p, timestamp=ts) for p in payloads]
    return out


def test_loop_decoder_puts_decoded_frames_on_the_track_queue() -> None:
    async def run() -> list:
        out: asyncio.Queue = asyncio.Queue()
        dec = LoopDecoder(out, threading.Event())
        for frame in encoded(tone48k(0.2)):
            dec.put((OPUS, frame))
        assert dec.frames == out.qsize() == 10
        return [out.get_nowait() for _ in range(10)]

    frames = asyncio.run(run())
    assert all(f.sample_rate == RATE and f.samples == 960 and f.layout.nb_channels == 1 for f in frames)
    assert [f.pts for f in frames] == [i * 960 for i in range(10)]
    assert np.abs(frames[-1].to_ndarray()).max() > 4000  # the tone, not silence


def test_a_bad_frame_is_reported_and_decoding_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> tuple[int, bool]:
        out: asyncio.Queue = asyncio.Queue()
        error = threading.Event()
        dec = LoopDecoder(out, error)
        good = encoded(tone48k(0.1))
        dec.put((OPUS, good[0]))
        dec.put((OPUS, JitterFrame(data=b"\xff" * 7, timestamp=960)))  # not an Opus packet
        dec.put((OPUS, good[2]))
        return out.qsize(), error.is_set()

    with caplog.at_level(logging.WARNING, logger="workbench.io.loopdecode"):
        n, flagged = asyncio.run(run())
    assert flagged and n >= 2  # the frames on either side of the bad one both came out
    assert any("failed to decode" in r.message for r in caplog.records)


def test_get_waits_for_the_stop_as_the_decoder_thread_expects() -> None:
    dec = LoopDecoder(asyncio.Queue(), threading.Event())
    done = threading.Event()
    thread = threading.Thread(target=lambda: (dec.get(), done.set()))
    thread.start()
    time.sleep(0.05)
    assert not done.is_set()
    dec.put(None)
    thread.join(2)
    assert done.is_set()


async def _play(samples: np.ndarray, loop_decode: bool) -> tuple[list[Received], int | None]:
    """Frames received, and how many the receiver's LoopDecoder decoded (None: aiortc's thread did)."""
    link = await loopback(FilePlayerTrack(samples, tail_s=0.1), loop_decode=loop_decode)
    frames: list[Received] = []
    try:
        await asyncio.wait_for(ingest(link.remote_track, time.monotonic, frames.append), samples.size / RATE + 5)
        decoded = decode_on_loop(link.pc_recv.getReceivers()[0]).frames if loop_decode else None
    finally:
        await link.close()
    return frames, decoded


def test_a_loopback_link_decodes_on_the_loop_as_the_thread_does_and_ends() -> None:
    """Same audio both ways (Opus is deterministic; libopus's downmix differs from the average by at most 1 LSB),
    and the track ends when the sender stops."""
    src = tone48k(1.0)

    async def both() -> list[tuple[list[Received], int | None]]:
        return await asyncio.gather(_play(src, True), _play(src, False))

    (on_loop, decoded), (on_thread, _) = asyncio.run(both())
    assert len(on_loop) >= 45 and len(on_thread) >= 45  # ingest returned: the track ended both ways
    assert decoded == len(on_loop)  # every frame came from the LoopDecoder
    n = min(len(on_loop), len(on_thread))
    by_pts = {f.pts_s: f.samples for f in on_thread}
    diff = [np.abs(f.samples.astype(int) - by_pts[f.pts_s]).max() for f in on_loop[:n] if f.pts_s in by_pts]
    assert len(diff) >= n - 2 and max(diff) <= 1


def test_decode_on_loop_refuses_a_started_receiver() -> None:
    async def run() -> None:
        link = await loopback(FilePlayerTrack(tone48k(0.2)), loop_decode=False)
        try:
            with pytest.raises(RuntimeError, match="before the receiver starts"):
                decode_on_loop(link.pc_recv.getReceivers()[0])
        finally:
            await link.close()

    asyncio.run(run())


def test_release_hands_on_what_the_jitter_buffer_holds_in_order_and_the_stream_goes_on() -> None:
    """aiortc's own jitter buffer and timestamp mapper, fed as its RTP handler feeds them (``_handle_rtp_packet``);
    only the receiver around them is left out.  A hole inside the held run is skipped, not waited for; later packets
    continue the stream; the hole's packet arriving late is dropped, as aiortc drops any packet that late."""
    from aiortc.jitterbuffer import JitterBuffer
    from aiortc.rtcrtpreceiver import TimestampMapper
    from aiortc.rtp import RtpPacket

    class Receiver:  # the two attributes of RTCRtpReceiver that release() reads
        def __init__(self) -> None:
            self._RTCRtpReceiver__jitter_buffer = JitterBuffer(capacity=16, prefetch=4)
            self._RTCRtpReceiver__timestamp_mapper = TimestampMapper()

    frames = encoded(tone48k(0.4))  # 20 frames
    receiver = Receiver()
    jitter, mapper = receiver._RTCRtpReceiver__jitter_buffer, receiver._RTCRtpReceiver__timestamp_mapper

    async def run() -> list[int]:
        out: asyncio.Queue = asyncio.Queue()
        dec = LoopDecoder(out, threading.Event(), receiver)  # type: ignore[arg-type]

        def packet(i: int) -> None:  # what RTCRtpReceiver._handle_rtp_packet does with packet i
            p = RtpPacket(payload_type=111, sequence_number=1000 + i, timestamp=5000 + frames[i].timestamp,
                          payload=frames[i].data)
            p._data = p.payload  # type: ignore[attr-defined]
            _, frame = jitter.add(p)
            if frame is not None:
                frame.timestamp = mapper.map(frame.timestamp)
                dec.put((OPUS, frame))

        for i in [0, 1, 2, 3, 4, 5, 7, 8]:  # 6 is lost
            packet(i)
        assert out.qsize() == 2  # frames 0 and 1: 2..5 wait for 4 later packets, and stall on the hole
        assert dec.release() == 6 and dec.released == 6
        assert dec.release() == 0  # nothing held any more
        packet(6)  # too late now: dropped by the buffer
        for i in range(9, 14):
            packet(i)  # 9 comes out when 13 arrives (prefetch again)
        return [f.pts for f in (out.get_nowait() for _ in range(out.qsize()))]

    pts = asyncio.run(run())
    assert pts == [frames[i].timestamp for i in [0, 1, 2, 3, 4, 5, 7, 8, 9]]
