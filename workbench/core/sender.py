"""Send-order rules for one Live session, with no I/O: what may go out, and in which order.

The server must see ActivityStart, then the turn's audio, then ActivityEnd, and no audio
between an ActivityEnd and the next ActivityStart; an activity must never be empty.  This
class turns turn-detector decisions and resampled audio into that sequence.  One writer task
sends its output in order (``live.Writer``), so the wire order is the order produced here.

The messages a client core hands the writer live here too: ``Outgoing`` (the mic side's),
``TextTurn`` (the greeting prompt) and ``ToolReply``; the turn book (``ledger.py``) files them by type.

State is one enum, ``OrderState``; every transition goes through ``SendOrder._to`` and the
``TRANSITIONS`` table.  ``start`` while an activity is open and ``end`` with none open raise
``InvalidState``: the turn detector alternates its decisions, so either is a bug in the caller.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np

from workbench.core.errors import InvalidState
from workbench.core.events import ClientMsg
from workbench.core.pcm import SENT_RATE

# The kinds of ``Outgoing`` (the mic side's messages); the writer knows how to send each.
OUTGOING_KINDS = frozenset({ClientMsg.ACTIVITY_START, ClientMsg.AUDIO, ClientMsg.ACTIVITY_END})


@dataclass(frozen=True)
class Outgoing:
    """One message for the writer: ``activity_start``, ``audio`` (int16, 16 kHz) or ``activity_end``.

    ``msg`` may be given as its string; it is stored as the ``ClientMsg`` (another kind raises ValueError).
    """

    msg: ClientMsg
    audio: np.ndarray | None = None
    media_t: float | None = None

    def __post_init__(self) -> None:
        msg = ClientMsg(self.msg)
        if msg not in OUTGOING_KINDS:
            raise ValueError(f"an Outgoing message is activity_start, audio or activity_end, not {msg.value!r}")
        object.__setattr__(self, "msg", msg)


@dataclass(frozen=True)
class TextTurn:
    """A text turn (the greeting prompt) for the writer: turn 0 in the ledger."""

    text: str


@dataclass(frozen=True)
class ToolReply:
    """A tool response for the writer (``responses``: the SDK's ``FunctionResponse`` objects); belongs to no turn."""

    responses: list[Any]


class OrderState(enum.Enum):
    IDLE = "idle"  # no activity: audio is dropped and counted
    HELD = "held"  # an activity is open, its ActivityStart held back until it has audio
    OPEN = "open"  # ActivityStart handed out: audio flows until ``end``


TRANSITIONS: dict[OrderState, frozenset[OrderState]] = {
    OrderState.IDLE: frozenset({OrderState.HELD}),  # start
    OrderState.HELD: frozenset({OrderState.OPEN, OrderState.IDLE}),  # first audio; end with none (nothing sent)
    OrderState.OPEN: frozenset({OrderState.IDLE}),  # end
}


class SendOrder:
    """Gates audio to activities and orders the signals around it.

    ``start(pre_roll)`` opens an activity; the pre-roll (audio from before the onset
    decision) follows ActivityStart at once so the first syllable is not clipped.  An
    ActivityStart with nothing to send yet is held back until audio arrives, and an
    end for an activity that never got audio sends nothing, so no activity is empty.
    Audio outside an activity is dropped and counted (``dropped_samples``): the server would
    discard it, or close the session (strict servers answer 1007).

    With ``chunk_ms`` audio is gathered into messages of at least that length; ActivityEnd
    sends what is pending first, so the end of a turn is never delayed by it.

    ``activities`` counts the ActivityStarts handed out (held-back starts that never got audio do not count).
    """

    def __init__(self, rate: int = SENT_RATE, chunk_ms: float = 0.0) -> None:
        if not chunk_ms >= 0:
            raise ValueError(f"send chunk must be >= 0 ms, got {chunk_ms}")
        self.rate = rate
        self.chunk_samples = int(round(rate * chunk_ms / 1000))
        self._pending: list[np.ndarray] = []
        self._pending_n = 0
        self._pending_t: float | None = None
        self.state = OrderState.IDLE
        self.dropped_samples = 0
        self.activities = 0

    def _to(self, new: OrderState) -> None:
        if new not in TRANSITIONS[self.state]:
            raise InvalidState(f"send order: {self.state.value} -> {new.value} is not a transition")
        self.state = new

    def start(self, pre_roll: np.ndarray | None, media_t: float | None = None) -> list[Outgoing]:
        """Open an activity, with the audio from before the onset; raises ``InvalidState`` if one is open."""
        if self.state is not OrderState.IDLE:
            raise InvalidState(f"send order: start while an activity is {self.state.value}")
        self._to(OrderState.HELD)
        return self._audio(pre_roll, media_t)

    def audio(self, media_t: float, samples: np.ndarray) -> list[Outgoing]:
        """Audio at ``media_t``: part of the open activity, or dropped and counted when none is open."""
        if self.state is OrderState.IDLE:
            self.dropped_samples += samples.size
            return []
        return self._audio(samples, media_t)

    def _audio(self, samples: np.ndarray | None, media_t: float | None) -> list[Outgoing]:
        if samples is None or samples.size == 0:
            return []
        out: list[Outgoing] = []
        if self.state is OrderState.HELD:
            self._to(OrderState.OPEN)
            out.append(Outgoing(ClientMsg.ACTIVITY_START, media_t=media_t))
            self.activities += 1
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
        out = [Outgoing(ClientMsg.AUDIO, audio=audio, media_t=self._pending_t)]
        self._pending, self._pending_n, self._pending_t = [], 0, None
        return out

    def end(self, media_t: float | None = None) -> list[Outgoing]:
        """Close the activity: pending audio, then ActivityEnd; nothing if it never had audio.

        Raises ``InvalidState`` when no activity is open.
        """
        if self.state is OrderState.IDLE:
            raise InvalidState("send order: end with no activity open")
        held = self.state is OrderState.HELD  # nothing was ever sent for this activity: send nothing
        self._to(OrderState.IDLE)
        if held:
            return []
        return [*self._flush(), Outgoing(ClientMsg.ACTIVITY_END, media_t=media_t)]
