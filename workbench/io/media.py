"""The media tracks, in one place (like aiortc's ``contrib/media.py``): what plays into a peer connection.

Every source and sink of audio is an aiortc ``MediaStreamTrack`` with one ``async recv()``:

- ``FilePlayerTrack``: a file played like a microphone (real-time pace, optional DTX), for sessions and tests.
- ``ModelAudioTrack``: the model's 24 kHz answers, resampled to 48 kHz frames for the browser, cleared on barge-in.
- ``HangupTrack``: the browser's microphone until the page hangs up, so a session ends while the call stays up.

Frame helpers (``mono_frame``, ``mono_int16``) and the loopback link live in ``webrtc.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import av
import numpy as np
import soxr
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from workbench.core.pcm import MIC_RATE, MODEL_RATE
from workbench.io.loopdecode import relay
from workbench.io.webrtc import FRAME_S, FRAME_SAMPLES, mono_frame

# -- the file-playing microphone ----------------------------------------------


class FilePlayerTrack(MediaStreamTrack):
    """Plays mono int16 48 kHz audio as 20 ms frames at real-time pace, like a microphone.

    Frame ``i`` is due ``i * 20 ms`` after the first ``recv()`` (scheduled against that start, so
    the pace never drifts).  With ``dtx`` an all-zero frame is not returned at all: ``recv()``
    sleeps to the next non-silent frame's due time, so the RTP sender goes quiet exactly like Opus
    DTX or a muted browser track.  ``tail_s`` of digital silence is played after the audio (and
    skipped, but waited for, under ``dtx``) before the track ends with ``MediaStreamError``.
    """

    kind = "audio"

    def __init__(self, samples: np.ndarray, *, dtx: bool = False, tail_s: float = 0.0) -> None:
        super().__init__()
        audio = np.asarray(samples)
        if audio.ndim != 1 or audio.dtype != np.int16:
            raise ValueError(f"FilePlayerTrack wants mono int16 samples, got {audio.dtype} shape {audio.shape}")
        if tail_s < 0:
            raise ValueError(f"tail_s must be >= 0, got {tail_s}")
        self.dtx = dtx
        self.tail_s = tail_s
        self._audio = audio
        self._audio_frames = -(-audio.size // FRAME_SAMPLES)
        self.n_frames = self._audio_frames + int(round(tail_s / FRAME_S))
        whole = audio.size // FRAME_SAMPLES
        silent = ~audio[: whole * FRAME_SAMPLES].reshape(whole, FRAME_SAMPLES).any(axis=1)
        if whole < self._audio_frames:
            silent = np.append(silent, not audio[whole * FRAME_SAMPLES :].any())
        self._sounding = np.flatnonzero(~silent)  # frame indices that carry a non-zero sample
        self._next = 0  # index of the next frame to hand out (or skip)
        self.t_start: float | None = None  # time.monotonic() at which frame 0 was due
        self.frames_sent = 0
        self.done = asyncio.Event()

    @property
    def position_s(self) -> float:
        """Media time handed out (or skipped in silence) so far."""
        return min(self._next, self.n_frames) * FRAME_S

    @property
    def duration_s(self) -> float:
        return self.n_frames * FRAME_S

    def due(self, pts_s: float) -> float:
        """``time.monotonic()`` at which the frame at media time ``pts_s`` was (or will be) handed out."""
        if self.t_start is None:
            raise RuntimeError("the track has not started playing")
        return self.t_start + pts_s

    def stop(self) -> None:
        super().stop()
        self.done.set()

    def _frame_samples(self, i: int) -> np.ndarray:
        if i >= self._audio_frames:
            return np.zeros(FRAME_SAMPLES, np.int16)
        chunk = self._audio[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]
        return chunk if chunk.size == FRAME_SAMPLES else np.pad(chunk, (0, FRAME_SAMPLES - chunk.size))

    def _next_index(self) -> int:
        """The next frame to hand out; under DTX the next sounding one (``n_frames`` if none is left)."""
        if not self.dtx:
            return self._next
        k = int(np.searchsorted(self._sounding, self._next))
        return int(self._sounding[k]) if k < self._sounding.size else self.n_frames

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.t_start is None:
            self.t_start = time.monotonic()
        i = self._next_index()
        # Sleep to the frame's due time; at the end, to the end of the tail, so a DTX session runs on.
        wait = self.t_start + min(i, self.n_frames) * FRAME_S - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        if i >= self.n_frames:
            self._next = self.n_frames
            self.stop()
            raise MediaStreamError
        self._next = i + 1
        self.frames_sent += 1
        return mono_frame(self._frame_samples(i), i * FRAME_SAMPLES)


# -- the model's voice, back to the browser --------------------------------------------------------


# Silent frames the agent's voice still sends after its last audio before it pauses (see ModelAudioTrack): 500 ms.
IDLE_FRAMES = 25


class ModelAudioTrack(MediaStreamTrack):
    """Plays the model's 24 kHz audio as 48 kHz 20 ms frames at real-time pace; silence when idle.

    The emulator (and Gemini) send audio faster than real time, so chunks queue here.  ``clear``
    drops what is queued and what the resampler holds (the answer was interrupted): the next frame
    aiortc's sender takes is silence, so the browser stops hearing the old answer one frame (20 ms)
    after the message, plus the network and its jitter buffer (``bench/BENCHMARKS.md``, "Barge-in").
    The sender keeps no queue of its own: it asks for a frame, encodes and sends it.

    Idle, the track pauses: once ``idle_frames`` silent frames have followed the last queued audio (the end of
    the answer decays, the receiver's jitter buffer plays out: aiortc's holds 4 frames, a browser's 1-3),
    ``recv()`` waits for the next ``push`` and nothing goes on the wire, as a browser's own Opus DTX sends
    nothing in silence (RFC 7587 section 3.1.3).  The first frame after the pause is due at once and its pts
    is where the clock is, so the pause is in the media time (``webrtc.send_audio_on_loop`` sends each frame's
    pts as its RTP timestamp).  The agent is silent most of a session; a frame, an encode and a packet every
    20 ms of that silence cost more than the answers (``bench/BENCHMARKS.md``, "Per-session CPU").
    """

    kind = "audio"

    def __init__(self, idle_frames: int = IDLE_FRAMES) -> None:
        super().__init__()
        self._resampler = soxr.ResampleStream(MODEL_RATE, MIC_RATE, 1, dtype="int16")
        self._queued: deque[np.ndarray] = deque()
        self._n_queued = 0
        self._t_start: float | None = None
        self._index = 0
        self.idle_frames = idle_frames
        self._silent_run = 0  # frames handed out since the last one that carried queued audio
        self._pushed = asyncio.Event()

    def push(self, samples24k: np.ndarray) -> None:
        out = self._resampler.resample_chunk(np.asarray(samples24k, dtype=np.int16))
        if out.size:
            self._queued.append(out)
            self._n_queued += out.size
            self._pushed.set()

    def stop(self) -> None:
        super().stop()
        self._pushed.set()  # a recv() waiting in a pause ends

    def clear(self) -> None:
        self._queued.clear()
        self._n_queued = 0
        self._resampler = soxr.ResampleStream(MODEL_RATE, MIC_RATE, 1, dtype="int16")

    def _take(self, n: int) -> np.ndarray:
        out = np.zeros(n, np.int16)
        filled = 0
        while filled < n and self._queued:
            head = self._queued[0]
            k = min(n - filled, head.size)
            out[filled : filled + k] = head[:k]
            filled += k
            if k == head.size:
                self._queued.popleft()
            else:
                self._queued[0] = head[k:]
        self._n_queued -= filled
        return out

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._t_start is None:
            self._t_start = time.monotonic()
        if not self._n_queued and self._silent_run >= self.idle_frames:
            self._pushed.clear()
            await self._pushed.wait()
            if self.readyState != "live":
                raise MediaStreamError
            # resume on the clock: the next frame is due now, its pts says how long the pause was
            self._index = max(self._index, int((time.monotonic() - self._t_start) / FRAME_S))
        wait = self._t_start + self._index * FRAME_S - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        had = self._n_queued
        frame = mono_frame(self._take(FRAME_SAMPLES), self._index * FRAME_SAMPLES)
        self._silent_run = 0 if had else self._silent_run + 1
        self._index += 1
        return frame


# -- the browser's microphone, ended by a hang-up ---------------------------------------------------


class HangupTrack(MediaStreamTrack):
    """The browser's track until ``hangup()``: then it ends, so the bridge finishes the session
    (and waits for the last answer) while the peer connection, and the agent's voice, stay up."""

    kind = "audio"

    def __init__(self, remote: MediaStreamTrack) -> None:
        super().__init__()
        self.remote = remote
        self._hung_up = asyncio.Event()
        self._pending: asyncio.Task[Any] | None = None
        # ingest takes the frames straight from the remote's loop decoder and awaits recv() here only for the
        # end (hang-up or the browser gone): no tasks and asyncio.wait per frame, as bench_load measures the path.
        relay(self, remote)

    def hangup(self) -> None:
        self._hung_up.set()

    async def recv(self) -> av.AudioFrame:
        if self._hung_up.is_set():
            raise MediaStreamError
        if self._pending is None:
            self._pending = asyncio.ensure_future(self.remote.recv())
            self._pending.add_done_callback(_retrieve)
        stop = asyncio.ensure_future(self._hung_up.wait())
        try:
            await asyncio.wait({self._pending, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not self._pending.done():
            raise MediaStreamError
        pending, self._pending = self._pending, None
        return pending.result()  # MediaStreamError when the browser went away

    def stop(self) -> None:
        super().stop()
        if self._pending is not None:
            self._pending.cancel()


def _retrieve(task: asyncio.Future[Any]) -> None:
    # A recv() left pending at hang-up must not log "exception never retrieved".
    if not task.cancelled():
        task.exception()
