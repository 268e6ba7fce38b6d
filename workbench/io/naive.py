"""The naive bridge's mistakes, switchable one at a time, to reproduce the field report on demand.

Each mode swaps one piece of the real bridge for the version the field report describes:

- ``receive-once``: ``async for msg in session.receive()`` once.  ``receive()`` ends at the first
  ``turn_complete`` (the greeting), nobody reads after that, websockets stops reading the socket
  once ``max_queue`` frames wait, pongs go unread and the client closes with ``1011 keepalive
  ping timeout``.
- ``frame-count``: a silence detector that counts silent frames instead of reading the clock.
  When ``track.recv()`` stops returning frames in silence (DTX, muted track) the count never
  grows and ActivityEnd is never sent (Failure B).
- ``two-tasks``: audio and activity signals sent by two unsynchronised tasks, the audio loop paced
  to real time, so audio still queued when ActivityEnd goes out lands after it.

The real path (``TurnDetector``, ``live.Writer``, ``live.receive_forever``) stays untouched.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
from google.genai import types

from workbench.core.events import ClientMsg
from workbench.core.params import TurnParams
from workbench.core.pcm import SENT_RATE, level_dbfs
from workbench.core.sender import Outgoing
from workbench.core.turns import Decision, DecisionKind
from workbench.io.live import Queued, Writer, WriterItem

MODES = {
    "receive-once": "a receive loop that stops after the first turn_complete (1011 keepalive ping timeout)",
    "frame-count": "silence measured by counting frames, not on the clock (Failure B under DTX)",
    "two-tasks": "audio and activity signals from two unsynchronised tasks (audio after ActivityEnd)",
}


def check_mode(mode: str | None) -> str | None:
    """``None`` or a known mode; a one-line ValueError otherwise."""
    if mode is not None and mode not in MODES:
        raise ValueError(f"unknown naive mode {mode!r}; choose one of: {', '.join(MODES)}")
    return mode


async def receive_once(session: Any, on_message: Callable[[types.LiveServerMessage], None]) -> None:
    """The naive receive loop: one pass of ``session.receive()``, which ends at the first turn_complete."""
    async for msg in session.receive():
        on_message(msg)


class FrameCountDetector:
    """Counts silent frames to end a turn; ``tick`` does nothing, so frames that stop never end a turn.

    Same interface as ``TurnDetector`` (``frame``/``tick``/``finish`` -> decisions).  A frame is
    speech when its level is at least ``start_db`` (``stop_db`` to stay in speech); the turn ends
    after ``silence_ms`` worth of silent *frames*.  ``finish`` does nothing either: the field
    report's VAD has no notion of the track ending.
    """

    def __init__(self, params: TurnParams, rate: int = SENT_RATE) -> None:
        self.params = params
        self.rate = rate
        self.turn_open = False
        self._silent_s = 0.0  # duration of consecutive silent frames counted
        self._speech_s = 0.0
        self._speech_t: float | None = None
        self._last_speech_end = 0.0
        self._history: deque[tuple[float, np.ndarray]] = deque()

    def next_deadline(self) -> float | None:
        return None  # nothing is ever decided on the clock: that is Failure B

    def frame(self, t: float, samples: np.ndarray) -> list[Decision]:
        n_s = samples.size / self.rate
        level = level_dbfs(samples)
        self._history.append((t, samples))
        while self._history and self._history[0][0] < t - self.params.pre_roll_ms / 1000:
            self._history.popleft()
        if not self.turn_open:
            if level >= self.params.start_db:
                self._speech_t = t if self._speech_t is None else self._speech_t
                self._speech_s += n_s
                if self._speech_s * 1000 >= self.params.min_speech_ms:
                    self.turn_open = True
                    self._silent_s = 0.0
                    self._last_speech_end = t + n_s
                    pre_roll = np.concatenate([s for _, s in self._history])
                    return [Decision(DecisionKind.SPEECH_START, t + n_s, self._speech_t, "frames above threshold",
                                     level, pre_roll)]
            else:
                self._speech_t, self._speech_s = None, 0.0
            return []
        if level >= self.params.stop_db:
            self._silent_s = 0.0
            self._last_speech_end = t + n_s
            return []
        self._silent_s += n_s
        if self._silent_s * 1000 < self.params.silence_ms:
            return []
        self.turn_open = False
        self._speech_t, self._speech_s = None, 0.0
        return [Decision(DecisionKind.SPEECH_END, t + n_s, self._last_speech_end, "silent frames counted", level)]

    def tick(self, t: float) -> list[Decision]:
        return []

    def finish(self, t: float) -> list[Decision]:
        return []


class TwoTaskWriter(Writer):
    """Audio through one queue and task, paced to real time; signals through another, sent at once.

    Nothing orders the two, so the audio still queued when ActivityEnd is sent goes out after it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.audio_queue: asyncio.Queue[Queued | None] = asyncio.Queue()

    def put(self, item: WriterItem, turn: int | None = None, attempt: int | None = None) -> None:
        if isinstance(item, Outgoing) and item.msg == ClientMsg.AUDIO:
            self.audio_queue.put_nowait(Queued(self.gen, item, turn, attempt))
        else:
            super().put(item, turn, attempt)

    def stop(self) -> None:
        super().stop()
        self.audio_queue.put_nowait(None)

    async def run(self) -> None:
        await asyncio.gather(super().run(), self._audio_loop())

    async def _audio_loop(self) -> None:
        while (entry := await self.audio_queue.get()) is not None:
            item = entry.item
            await self._write(entry)
            assert isinstance(item, Outgoing) and item.audio is not None
            await asyncio.sleep(item.audio.size / SENT_RATE)  # "stream at real time", as audio loops often do
