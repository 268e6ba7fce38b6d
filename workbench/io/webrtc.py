"""The WebRTC I/O shell: frame helpers and a loopback link (the tracks themselves are in ``media.py``).

Every microphone source is an aiortc ``MediaStreamTrack``; the bridge consumes it through
``workbench.io.ingest``.  Facts this module is built on (aiortc 1.16, measured on loopback):

- ``RemoteStreamTrack.recv()`` blocks forever while no packets arrive, so ``ingest`` runs the
  consumer's clock with a timer beside it: silence is measured on the clock.
- The receiver's jitter buffer (prefetch 4) holds the newest ~80 ms until 4 later packets arrive.
  When a sender stops in silence (Opus DTX, ``replaceTrack(null)``) that speech tail arrives only
  when the next burst starts, with its old pts.  The browser cannot be changed, so the bridge must
  judge a frame by ``pts_s`` (media time), not by arrival time (``pipeline.MicPipeline``); the receiver can
  be changed: ``set_jitter_prefetch(receiver, 1)`` shrinks the held tail to one frame, and
  ``workbench.io.ingest`` releases it when packets stop (``LoopDecoder.release``).
- aiortc's Opus encoder (libopus via FFmpeg) labels the first packet after a sender gap with the
  timestamp continuing the previous burst; the next packet carries the true time.  So one 20 ms
  frame of each new burst looks, by pts, as if it followed the old burst directly.
- aiortc decodes Opus as packed s16 stereo, ``to_ndarray()`` shape (1, 1920) even from a mono
  sender; ``workbench.io.loopdecode`` (what the bridge uses) decodes it to s16 mono.
"""

from __future__ import annotations

import asyncio
import contextvars
import fractions
import math
from dataclasses import dataclass, field

import aioice.ice
import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamTrack

from workbench.core.pcm import MIC_RATE
from workbench.io.loopdecode import HoldingJitterBuffer, decode_audio_on_loop

FRAME_SAMPLES = 960  # 20 ms at 48 kHz, what browsers and aiortc packetise
FRAME_S = FRAME_SAMPLES / MIC_RATE
CONNECT_TIMEOUT_S = 10.0

# -- frames ------------------------------------------------------------------


def mono_frame(samples: np.ndarray, pts: int, rate: int = MIC_RATE) -> av.AudioFrame:
    """An s16 mono ``AudioFrame`` of int16 ``samples`` with ``pts`` in 1/``rate`` units."""
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, dtype=np.int16).reshape(1, -1),
                                       format="s16", layout="mono")
    frame.sample_rate = rate
    frame.pts = pts
    frame.time_base = fractions.Fraction(1, rate)
    return frame


def to_mono(frame: av.AudioFrame) -> np.ndarray:
    """Mono int16 samples of a 48 kHz frame: channels averaged (aiortc decodes Opus as packed stereo)."""
    if frame.sample_rate != MIC_RATE:
        raise ValueError(f"expected a {MIC_RATE} Hz frame, got {frame.sample_rate} Hz")
    return mono_int16(frame)


def mono_int16(frame: av.AudioFrame) -> np.ndarray:
    """Mono int16 samples of an audio frame of any rate, layout and sample format (channels averaged)."""
    channels = frame.layout.nb_channels
    if frame.format.name == "s16" and channels <= 2:  # the hot paths (Opus decoders): read the plane in place
        x = np.frombuffer(frame.planes[0], np.int16, count=channels * frame.samples)
        if channels == 1:  # workbench.io.loopdecode decodes to mono
            return x.copy()
        return ((x[0::2].astype(np.int32) + x[1::2]) >> 1).astype(np.int16)  # aiortc's decoder thread: stereo
    x = frame.to_ndarray()
    x = x.reshape(channels, -1).T if frame.format.is_planar else x.reshape(-1, channels)
    if x.dtype.kind == "f":  # float formats from other decoders
        x = np.clip(np.round(x * 32768.0), -32768, 32767)
    elif x.dtype == np.int32:  # s32: the top 16 bits
        x = x >> 16
    elif x.dtype == np.uint8:  # u8: offset binary
        x = (x.astype(np.int32) - 128) << 8
    if channels == 1:
        return x[:, 0].astype(np.int16, copy=True)
    return (x.astype(np.int32).sum(axis=1) // channels).astype(np.int16)


# -- sending audio ---------------------------------------------------------------

OPUS_BITRATE = 32_000  # mono speech; aiortc's encoder sends stereo at 96 kbit/s
_S_TRACK = "_RTCRtpSender__track"
_S_RUN = "_next_encoded_frame"


def audio_level_dbov(samples: np.ndarray) -> int:
    """RFC 6464's audio level of int16 ``samples``: 0 (loudest) to -127 dBov, as aiortc computes it (RFC 6465,
    Appendix A), in numpy instead of a Python loop per sample."""
    x = samples.astype(np.float32)
    rms = math.sqrt(float(np.dot(x, x)) / max(x.size, 1)) / 32767.0
    return -127 if rms <= 0 else round(min(max(20 * math.log10(rms), -127.0), 0.0))


def send_audio_on_loop(sender: RTCRtpSender) -> None:
    """Encode what ``sender``'s track gives (s16 mono 48 kHz frames) on the event loop; call before the
    connection starts sending.

    Why: per 20 ms frame aiortc's sender computes the RFC 6464 audio level in a Python loop over the samples
    (~0.3 ms), and hands the frame to the default executor for a resample to stereo and a stereo encode at
    96 kbit/s, and back (two thread hand-overs and loop wake-ups).  Here a mono libopus encoder runs inline (an
    Opus frame encodes in a fraction of a millisecond; receivers decode mono and stereo Opus alike, RFC 7587
    section 3.4) and the level is computed in numpy.  The track is read exactly as before: one ``recv()`` per
    packet, paced by the track.

    Each packet's RTP timestamp is its frame's pts, so a track that pauses (``serve``'s ``ModelAudioTrack``
    between answers) leaves the pause in the timestamps, as a browser's Opus DTX does (RFC 7587 section
    3.1.3); aiortc's encoder numbers packets by its own count, so a pause would not show.  aiortc's private
    ``_next_encoded_frame`` is replaced on this sender only; an aiortc without it fails here, loudly.
    """
    if not hasattr(sender, _S_RUN) or not hasattr(sender, _S_TRACK):
        raise RuntimeError("aiortc's RTCRtpSender changed: cannot encode on the loop")
    from aiortc.rtcrtpsender import RTCEncodedFrame

    codec = av.CodecContext.create("libopus", "w")
    codec.bit_rate = OPUS_BITRATE
    codec.format = "s16"
    codec.layout = "mono"
    codec.sample_rate = MIC_RATE
    codec.time_base = fractions.Fraction(1, MIC_RATE)
    codec.options = {"application": "voip"}

    async def next_encoded_frame(_codec: object) -> RTCEncodedFrame | None:
        frame = await getattr(sender, _S_TRACK).recv()
        if not sender._enabled:  # as aiortc: read the track, drop the frame
            return None
        if frame.format.name != "s16" or frame.layout.nb_channels != 1 or frame.sample_rate != MIC_RATE:
            raise ValueError(f"send_audio_on_loop wants s16 mono {MIC_RATE} Hz frames, got {frame.format.name} "
                             f"{frame.layout.name} {frame.sample_rate} Hz")
        samples = np.frombuffer(frame.planes[0], np.int16, count=frame.samples)
        payloads = [bytes(p) for p in codec.encode(frame)]
        if not payloads:
            return None
        ts = frame.pts * frame.time_base.numerator * MIC_RATE // frame.time_base.denominator
        return RTCEncodedFrame(payloads, ts, audio_level_dbov(samples))

    setattr(sender, _S_RUN, next_encoded_frame)


# -- loopback link --------------------------------------------------------------

_loopback_only: contextvars.ContextVar[bool] = contextvars.ContextVar("workbench_loopback_only", default=False)
_original_get_host_addresses = aioice.ice.get_host_addresses


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    """Inside ``loopback()``: 127.0.0.1 only.  Elsewhere: aioice's addresses plus 127.0.0.1."""
    if _loopback_only.get():
        return ["127.0.0.1"] if use_ipv4 else ["::1"]
    addresses = _original_get_host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
    return addresses + ["127.0.0.1"] if use_ipv4 and "127.0.0.1" not in addresses else addresses


def patch_aioice_loopback() -> None:
    """Let aioice offer 127.0.0.1, which it leaves out; idempotent.

    Peers on one machine (tests, a local browser) then connect even when ``lo`` is the only
    interface that works.  ``loopback()`` restricts its own candidates to 127.0.0.1.
    """
    aioice.ice.get_host_addresses = _get_host_addresses


@dataclass
class LoopbackLink:
    """Two peer connections in one process: ``pc_send`` carries the track to ``pc_recv``."""

    pc_send: RTCPeerConnection
    pc_recv: RTCPeerConnection
    remote_track: MediaStreamTrack
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, repr=False)

    async def close(self) -> None:
        """Close both peers; the remote track ends.  Safe to call twice."""
        for task in self._tasks:
            task.cancel()
        await self.pc_send.close()
        await self.pc_recv.close()


def _config() -> RTCConfiguration:
    # No ICE servers: aiortc would otherwise default to Google's STUN server and wait on it.
    return RTCConfiguration(iceServers=[])


async def _connected(pc: RTCPeerConnection) -> None:
    done = asyncio.Event()

    @pc.on("connectionstatechange")
    def _changed() -> None:
        if pc.connectionState in ("connected", "failed", "closed"):
            done.set()

    if pc.connectionState != "connected":
        await done.wait()
    if pc.connectionState != "connected":
        raise ConnectionError(f"loopback peer connection {pc.connectionState}")


def set_jitter_prefetch(receiver: RTCRtpReceiver, prefetch: int) -> None:
    """Replace an audio receiver's jitter buffer by one that holds ``prefetch`` frames (aiortc: 4).

    The receive-side fix for stale speech tails: with 1 the steady delay drops from four frames
    (~80 ms) to one (~20 ms) and only the last 20 ms of a burst wait for the next one; the price is no reordering
    tolerance, which loopback and most audio paths do not need.  Call it before packets arrive.
    Uses aiortc's private attribute (checked, so an aiortc upgrade fails loudly, not silently).
    """
    name = "_RTCRtpReceiver__jitter_buffer"
    if not isinstance(getattr(receiver, name, None), JitterBuffer):
        raise RuntimeError("this aiortc has no audio jitter buffer where set_jitter_prefetch expects it")
    if receiver.track.kind != "audio":
        raise ValueError("set_jitter_prefetch is for audio receivers")
    old = getattr(receiver, name)
    on_held = old.on_held if isinstance(old, HoldingJitterBuffer) else None  # decode_on_loop's, if it came first
    setattr(receiver, name, HoldingJitterBuffer(capacity=16, prefetch=prefetch, on_held=on_held))


async def loopback(
    track: MediaStreamTrack,
    *,
    jitter_prefetch: int | None = None,
    loop_decode: bool = True,
    loop_encode: bool = False,
    timeout_s: float = CONNECT_TIMEOUT_S,
) -> LoopbackLink:
    """Send ``track`` as Opus 48 kHz from one peer connection to another over 127.0.0.1.

    ``jitter_prefetch`` sets the receiver's jitter buffer depth (``None``: aiortc's 4, as a
    browser-facing aiortc bridge has unless it too calls ``set_jitter_prefetch``).
    ``loop_decode`` decodes on the event loop (``workbench.io.loopdecode``), as the bridge's browser
    server does; False keeps aiortc's decoder thread.  ``loop_encode`` sends ``track`` the way ``serve`` sends the
    agent's voice (``send_audio_on_loop``); False as aiortc sends it.

    When ``track`` ends, the sending peer's RTP sender is stopped, which sends an RTCP BYE; the
    receiver then ends ``remote_track`` as it would for a browser that hung up.
    """
    patch_aioice_loopback()
    pc_send = RTCPeerConnection(_config())
    pc_recv = RTCPeerConnection(_config())
    token = _loopback_only.set(True)
    try:
        got_track: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()

        @pc_recv.on("track")
        def _on_track(remote: MediaStreamTrack) -> None:
            if remote.kind == "audio" and not got_track.done():
                got_track.set_result(remote)

        transceiver = pc_send.addTransceiver(track, direction="sendonly")
        opus = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType.lower() == "audio/opus"]
        transceiver.setCodecPreferences(opus)
        if loop_encode:
            send_audio_on_loop(transceiver.sender)

        async def handshake() -> MediaStreamTrack:
            await pc_send.setLocalDescription(await pc_send.createOffer())
            await pc_recv.setRemoteDescription(pc_send.localDescription)
            if jitter_prefetch is not None:
                for receiver in pc_recv.getReceivers():
                    set_jitter_prefetch(receiver, jitter_prefetch)
            if loop_decode:
                decode_audio_on_loop(pc_recv)
            await pc_recv.setLocalDescription(await pc_recv.createAnswer())
            await pc_send.setRemoteDescription(pc_recv.localDescription)
            await asyncio.gather(_connected(pc_send), _connected(pc_recv))
            return await got_track

        remote = await asyncio.wait_for(handshake(), timeout_s)
    except BaseException:
        await pc_send.close()
        await pc_recv.close()
        raise
    finally:
        _loopback_only.reset(token)

    link = LoopbackLink(pc_send=pc_send, pc_recv=pc_recv, remote_track=remote)
    sender = transceiver.sender

    def _ended() -> None:
        task = asyncio.ensure_future(sender.stop())
        link._tasks.add(task)
        task.add_done_callback(link._tasks.discard)

    if track.readyState == "ended":
        _ended()
    else:
        track.on("ended", _ended)
    return link
