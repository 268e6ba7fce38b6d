"""Send-order rules for one Live session, with no I/O: what may go out, and in which order.

The server must see ActivityStart, then the turn's audio, then ActivityEnd, and no audio
between an ActivityEnd and the next ActivityStart; an activity must never be empty.  This
class turns turn-detector decisions and resampled audio into that sequence.  One writer task
sends its output in order (``live.Writer``), so the wire order is the order produced here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Outgoing:
    """One message for the writer: ``activity_start``, ``audio`` (int16, 16 kHz) or ``activity_end``."""

    msg: str
    audio: np.ndarray | None = None
    media_t: float | None = None


class SendOrder:
    """Gates audio to activities and orders the signals around it.

    ``start(pre_roll)`` opens an activity; the pre-roll (audio from before the onset
    decision) follows ActivityStart at once so the first syllable is not clipped.  An
    ActivityStart with nothing to send yet is held back until audio arrives, and an
    end for an activity that never got audio sends nothing, so no activity is empty.
    Audio outside an activity is dropped and counted: the server would discard it, or
    close the session (strict servers answer 1007).

    With ``chunk_ms`` audio is gathered into messages of at least that length; ActivityEnd
    sends what is pending first, so the end of a turn is never delayed by it.
    """

    def __init__(self, rate: int = 16_000, chunk_ms: float = 0.0) -> None:
        if not chunk_ms >= 0:
            raise ValueError(f"send chunk must be >= 0 ms, got {chunk_ms}")
        self.rate = rate
        self.chunk_samples = int(round(rate * chunk_ms / 1000))
        self._pending: list[np.ndarray] = []
        self._pending_n = 0
        self._pending_t: float | None = None
        self.open = False
        self._start_pending = False
        self._samples_in_activity = 0
        self.dropped_samples = 0
        self.activities = 0

    def start(self, pre_roll: np.ndarray | None, media_t: float | None = None) -> list[Outgoing]:
        if self.open:
            return []
        self.open = True
        self._samples_in_activity = 0
        self._start_pending = True
        return self._audio(pre_roll, media_t)

    def audio(self, media_t: float, samples: np.ndarray) -> list[Outgoing]:
        if not self.open:
            self.dropped_samples += samples.size
            return []
        return self._audio(samples, media_t)

    def _audio(self, samples: np.ndarray | None, media_t: float | None) -> list[Outgoing]:
        if samples is None or samples.size == 0:
            return []
        out: list[Outgoing] = []
        if self._start_pending:
            out.append(Outgoing("activity_start", media_t=media_t))
            self._start_pending = False
            self.activities += 1
        self._samples_in_activity += samples.size
        if not self._pending:
            self._pending_t = media_t
        self._pending.append(samples)
        self._pending_n += samples.size
        if self._pending_n >= self.chunk_samples:
            out += self._flush()
        return out

    def _flush(self) -> list[Outgoing]:
        if not self._pending:
            return []
        audio = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
        out = [Outgoing("audio", audio=audio, media_t=self._pending_t)]
        self._pending, self._pending_n, self._pending_t = [], 0, None
        return out

    def end(self, media_t: float | None = None) -> list[Outgoing]:
        if not self.open:
            return []
        self.open = False
        if self._start_pending:  # nothing was ever sent for this activity: send nothing
            self._start_pending = False
            return []
        return [*self._flush(), Outgoing("activity_end", media_t=media_t)]
