"""Streaming 48 kHz -> 16 kHz resampling that keeps media time across gaps in the input."""

from __future__ import annotations

import numpy as np
import soxr

from workbench.core.pcm import MIC_RATE, SENT_RATE


class Resampler:
    """A soxr stream that knows the media time of every sample it outputs.

    soxr holds back ~21 ms and emits in bursts, so output time is counted from the
    samples that came out, not from the input frame.  A jump in the input's media
    time (frames stopped: DTX, a muted track) flushes the stream and restarts the
    count at the new time, so no silence is invented and no time is lost.
    """

    def __init__(self, in_rate: int = MIC_RATE, out_rate: int = SENT_RATE, quality: str = "HQ") -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.quality = quality
        self._stream: soxr.ResampleStream | None = None
        self._next_in_t: float | None = None  # media time where the next input frame should start
        self._out_t = 0.0  # media time of the next output sample

    def _new_stream(self) -> soxr.ResampleStream:
        return soxr.ResampleStream(self.in_rate, self.out_rate, 1, dtype="int16", quality=self.quality)

    def push(self, media_t: float, samples: np.ndarray) -> list[tuple[float, np.ndarray]]:
        """Feed int16 mono samples starting at ``media_t``; returns [(media_t, int16 16 kHz), ...]."""
        out: list[tuple[float, np.ndarray]] = []
        tolerance = 0.5 * len(samples) / self.in_rate
        if self._stream is None or self._next_in_t is None or abs(media_t - self._next_in_t) > tolerance:
            out.extend(self.flush())
            self._stream = self._new_stream()
            self._out_t = media_t
        self._next_in_t = media_t + len(samples) / self.in_rate
        assert self._stream is not None
        y = self._stream.resample_chunk(samples)
        if y.size:
            out.append((self._out_t, y))
            self._out_t += y.size / self.out_rate
        return out

    def flush(self) -> list[tuple[float, np.ndarray]]:
        """Emit what soxr holds back (end of input or a gap)."""
        if self._stream is None:
            return []
        y = self._stream.resample_chunk(np.zeros(0, np.int16), last=True)
        self._stream = None
        self._next_in_t = None
        if not y.size:
            return []
        t = self._out_t
        self._out_t += y.size / self.out_rate
        return [(t, y)]
