"""Audio decoding on the event loop, instead of on aiortc's decoder thread (one per receiver).

aiortc gives every ``RTCRtpReceiver`` a thread that decodes complete encoded frames (built for
video, where a decode takes milliseconds) and hands each decoded frame back to the loop with
``run_coroutine_threadsafe``: per 20 ms audio frame a thread wake-up, a GIL hand-over, a wake-up
of the loop and a task.  An Opus frame decodes in less time than that round trip costs, so decoding
on the loop makes aiortc's receive path cheaper per session, and the loop no longer waits on one
thread per receiver for the GIL (the figures: ``bench/BENCHMARKS.md``, "Per-session CPU, the earlier
run", the two "receive only" rows).

Opus is decoded straight to mono (libopus downmixes a stereo stream in C; aiortc asks it for stereo,
which the bridge then averaged back in numpy): one decode, no numpy pass per frame.

A consumer on the same loop can take the frames straight from the decoder (``LoopDecoder.sink``,
what ``workbench.io.ingest`` does): no hop through the track's queue and no task wake-up per frame.
The queue then carries only the end of the track.  A wrapper track that passes frames on and only adds an
earlier end (the browser server's hang-up) says so with ``relay(wrapper, source)`` and gets the same.

``decode_on_loop(receiver)`` swaps the receiver's decoder queue (a private attribute, checked so
that an aiortc upgrade fails loudly) for a ``LoopDecoder`` before the receiver starts.  aiortc
still starts its thread, which now only waits for the receiver to stop and then ends the track
exactly as before (``recv()`` raises ``MediaStreamError``).

The speech tail.  aiortc's audio jitter buffer (capacity 16, prefetch 4) hands a frame on only
when 4 later packets have arrived, so when packets stop (Opus DTX, a muted or stalled sender) the
last ~80 ms stay inside until packets resume: after the turn's ActivityEnd, too late to be sent.
``LoopDecoder.release()`` decodes and hands on everything the jitter buffer holds, in order, and
moves the buffer's origin past it; ``workbench.io.ingest`` calls it when no packet has come for
``ingest.RELEASE_S`` (``HoldingJitterBuffer`` tells it of packets that went in without a frame
coming out, as while the buffer fills).  Nothing is lost or doubled: a packet that arrives after a release with a
sequence number before the new origin is one the buffer would have dropped as too late anyway
(aiortc drops misordered packets), and a missing packet inside the held run is skipped (aiortc
would stall on it until 16 later packets arrived, then skip it too).  A release while packets are
merely late costs one prefetch (~80 ms) of delay afterwards, as a fresh buffer has.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

import av
from aiortc import RTCPeerConnection, RTCRtpReceiver
from aiortc.codecs import get_decoder
from aiortc.codecs.opus import OpusDecoder
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpreceiver import TimestampMapper

logger = logging.getLogger(__name__)

_QUEUE = "_RTCRtpReceiver__decoder_queue"
_ERROR = "_RTCRtpReceiver__decoder_error"
_THREAD = "_RTCRtpReceiver__decoder_thread"
_JITTER = "_RTCRtpReceiver__jitter_buffer"
_MAPPER = "_RTCRtpReceiver__timestamp_mapper"


class MonoOpusDecoder(OpusDecoder):
    """aiortc's Opus decoder, asking libopus for one channel (set before the codec opens, at the first frame)."""

    def __init__(self) -> None:
        super().__init__()
        self.codec.layout = "mono"


def _decoder_for(codec: Any) -> Any:
    return MonoOpusDecoder() if codec.mimeType.lower() == "audio/opus" else get_decoder(codec)


class HoldingJitterBuffer(JitterBuffer):
    """aiortc's jitter buffer, saying when a packet went in and no frame came out (``on_held``).

    ``decode_on_loop`` puts it in the receiver's place, so ``ingest`` learns that packets are still
    arriving while the buffer fills (a stream's start, Chrome's DTX packets every ~400 ms in silence)
    and releases the buffer only once they stop.  Costs nothing while frames flow (each packet then
    pushes a frame out).
    """

    def __init__(self, capacity: int, prefetch: int = 0, on_held: Callable[[], None] | None = None) -> None:
        super().__init__(capacity=capacity, prefetch=prefetch)
        self.on_held = on_held

    def add(self, packet: Any) -> tuple[bool, JitterFrame | None]:
        pli_flag, frame = super().add(packet)
        if frame is None and self.on_held is not None:
            self.on_held()
        return pli_flag, frame


class LoopDecoder:
    """Stands in for the receiver's decoder queue: ``put`` decodes at once, on the caller's (the loop's) thread.

    aiortc calls ``put((codec, encoded_frame))`` from its RTP handler on the loop, and ``put(None)``
    when the receiver stops; its decoder thread calls ``get()``, which here blocks until that stop.
    """

    def __init__(self, output: asyncio.Queue[Any], decode_error: threading.Event,
                 receiver: RTCRtpReceiver | None = None) -> None:
        self._output = output  # the remote track's frame queue, which ``recv()`` reads
        self._decode_error = decode_error
        self._receiver = receiver  # whose jitter buffer ``release`` empties (None: nothing to release)
        self._decoder: Any = None
        self._codec: Any = None
        self._codec_name: str | None = None
        self._stopped = threading.Event()
        self.frames = 0
        self.released = 0  # frames handed on by ``release`` (counted in ``frames`` too)
        self.sink: Callable[[av.AudioFrame], None] | None = None  # takes each frame instead of the queue
        self.on_held: Callable[[], None] | None = None  # a packet went into the jitter buffer, no frame came out

    def attach(self, sink: Callable[[av.AudioFrame], None]) -> bool:
        """Hand frames to ``sink`` from now on, first the ones already queued; False when the track already ended.

        The queue's end-of-track marker (None) stays in the queue, for ``recv()`` to raise on.
        """
        while not self._output.empty():
            frame = self._output.get_nowait()
            if frame is None:
                self._output.put_nowait(None)  # ended: leave the marker for recv()
                return False
            sink(frame)
        self.sink = sink
        return True

    def detach(self) -> None:
        self.sink = None

    def put(self, item: tuple[Any, Any] | None) -> None:
        if item is None:
            self._stopped.set()
            return
        codec, encoded_frame = item
        self._codec = codec
        if codec.name != self._codec_name:
            self._decoder, self._codec_name = _decoder_for(codec), codec.name
        try:
            frames = self._decoder.decode(encoded_frame)
        except av.FFmpegError as exc:  # as aiortc: keep the decoder's state, report, go on
            logger.warning("failed to decode %s frame: %s", codec.name, exc)
            self._decode_error.set()
            return
        self.frames += len(frames)
        for frame in frames:
            if self.sink is not None:
                self.sink(frame)
            else:
                self._output.put_nowait(frame)

    def packet_held(self) -> None:
        """``HoldingJitterBuffer.on_held``: hand it to whoever listens (``ingest``)."""
        if self.on_held is not None:
            self.on_held()

    def release(self) -> int:
        """Decode and hand on every frame the receiver's jitter buffer holds; return how many.

        Call it on the loop when packets have stopped.  The frames go where ``put``'s go (the sink
        or the track's queue), in sequence order with aiortc's own media times, and the buffer's
        origin moves past the last one, so later packets continue the stream.
        """
        if self._receiver is None or self._codec is None or self._stopped.is_set():
            return 0
        jitter = getattr(self._receiver, _JITTER, None)
        mapper = getattr(self._receiver, _MAPPER, None)
        if not (isinstance(jitter, JitterBuffer) and hasattr(jitter, "_origin") and hasattr(jitter, "_packets")
                and isinstance(mapper, TimestampMapper)):
            raise RuntimeError("this aiortc has no jitter buffer where LoopDecoder.release expects it")
        if jitter._origin is None:
            return 0
        held: list[Any] = []
        last = -1
        for count in range(jitter.capacity):
            packet = jitter._packets[(jitter._origin + count) % jitter.capacity]
            if packet is not None:
                held.append(packet)
                last = count
        if not held:
            return 0
        jitter.remove(last + 1)
        frames: list[JitterFrame] = []
        for packet in held:  # audio: one packet a frame, but group by timestamp as the buffer does
            data = getattr(packet, "_data", b"")
            if frames and frames[-1].timestamp == packet.timestamp:
                frames[-1].data += data
            else:
                frames.append(JitterFrame(data=data, timestamp=packet.timestamp))
        before = self.frames
        for frame in frames:
            frame.timestamp = mapper.map(frame.timestamp)  # as the receiver does before it queues a frame
            self.put((self._codec, frame))
        self.released += self.frames - before
        return self.frames - before

    def get(self) -> None:
        """aiortc's decoder thread: nothing to decode; wait for the stop, then let it end the track."""
        self._stopped.wait()


def decode_on_loop(receiver: RTCRtpReceiver) -> LoopDecoder:
    """Decode ``receiver``'s audio on the event loop; call it before the connection starts (after the offer)."""
    if receiver.track is None or receiver.track.kind != "audio":
        raise ValueError("decode_on_loop is for audio receivers")
    queue = getattr(receiver, _QUEUE, None)
    error = getattr(receiver, _ERROR, None)
    output = getattr(receiver.track, "_queue", None)
    if not (hasattr(queue, "put") and isinstance(error, threading.Event) and isinstance(output, asyncio.Queue)):
        raise RuntimeError("this aiortc has no decoder queue where decode_on_loop expects it")
    if isinstance(queue, LoopDecoder):  # already: the one it has
        return queue
    if getattr(receiver, _THREAD, None) is not None:
        raise RuntimeError("decode_on_loop must be called before the receiver starts (its decoder thread runs)")
    jitter = getattr(receiver, _JITTER, None)
    if not (isinstance(jitter, JitterBuffer) and isinstance(getattr(jitter, "_prefetch", None), int)):
        raise RuntimeError("this aiortc has no jitter buffer where decode_on_loop expects it")
    decoder = LoopDecoder(output, error, receiver)
    setattr(receiver, _JITTER, HoldingJitterBuffer(jitter.capacity, jitter._prefetch, decoder.packet_held))
    setattr(receiver, _QUEUE, decoder)
    _BY_TRACK[receiver.track] = decoder
    return decoder


_BY_TRACK: weakref.WeakKeyDictionary[Any, LoopDecoder] = weakref.WeakKeyDictionary()


def decoder_of(track: Any) -> LoopDecoder | None:
    """The ``LoopDecoder`` feeding ``track`` (a receiver's remote track, or a wrapper ``relay`` named), if any."""
    decoder = _BY_TRACK.get(track)
    if decoder is None and (source := _RELAYED.get(track)) is not None:
        decoder = _BY_TRACK.get(source)
    return decoder


_RELAYED: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def relay(wrapper: Any, source: Any) -> None:
    """``wrapper`` passes on ``source``'s frames unchanged and may only end earlier (``web.server.HangupTrack``):
    a consumer of ``wrapper`` may take the frames straight from ``source``'s decoder and await
    ``wrapper.recv()`` for the end alone, as ``workbench.io.ingest`` does."""
    _RELAYED[wrapper] = source


def decode_audio_on_loop(pc: RTCPeerConnection) -> list[LoopDecoder]:
    """``decode_on_loop`` for every audio receiver ``pc`` has (call it after ``setRemoteDescription(offer)``)."""
    return [decode_on_loop(r) for r in pc.getReceivers() if r.track is not None and r.track.kind == "audio"]
