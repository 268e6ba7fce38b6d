"""Which user turns went out, which got answers, and what must be re-sent after a reconnect: no I/O.

The bridge tells the ledger every message it hands to the writer (``sent``) and every server
message kind it reads (``server``).  A turn is an activity (ActivityStart, its audio, ActivityEnd)
or a text turn (the greeting prompt); it is answered by the first ``turn_complete`` after it closed
(the server answers in order).  When a connection dies, ``resend()`` is every unanswered turn's
messages in their original order: the open activity so far and every closed, unanswered one.  A
resumption handle only covers turns the server finished, so those are exactly the turns at risk.

The response watchdog lives here too: a closed turn with no response for ``watchdog_s`` since its
ActivityEnd (or since the last response message, or the reconnect that re-sent it) is due.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Server message kinds that show the model is working on the oldest unanswered turn.
PROGRESS_KINDS = ("model_audio", "model_text", "output_transcription", "tool_call", "generation_complete")


@dataclass
class LedgerTurn:
    """One user turn: its messages in order, when it closed, and whether it was answered."""

    n: int  # 0: a text turn (greeting prompt); 1, 2, ...: activities
    items: list[Any] = field(default_factory=list)
    closed_t: float | None = None
    progress_t: float | None = None  # last response message for this turn, or the re-send
    answered_t: float | None = None
    sends: int = 1  # 1 + times re-sent

    @property
    def closed(self) -> bool:
        return self.closed_t is not None


class TurnLedger:
    """Bookkeeping of turns for re-sending and for the response watchdog.

    ``item`` objects are opaque except for ``msg`` (``activity_start``/``audio``/``activity_end``)
    on activity messages and ``text`` on text turns; other items (tool replies) are not kept,
    as they belong to the connection whose tool call they answer.
    """

    def __init__(self, watchdog_s: float | None = None) -> None:
        self.watchdog_s = watchdog_s
        self.turns: list[LedgerTurn] = []  # unanswered turns, oldest first
        self.open: LedgerTurn | None = None
        self.activities = 0
        self.answered = 0
        self.resent_turns = 0
        self._fired: set[int] = set()  # id() of turns the watchdog fired for on this connection

    # -- input ------------------------------------------------------------------------------------
    def sent(self, item: Any, t: float) -> None:
        """The bridge handed ``item`` to the writer at session time ``t``."""
        msg = getattr(item, "msg", None)
        if msg == "activity_start":
            self.activities += 1
            self.open = LedgerTurn(n=self.activities, items=[item])
            self.turns.append(self.open)
        elif msg == "audio":
            if self.open is not None:
                self.open.items.append(item)
        elif msg == "activity_end":
            if self.open is not None:
                self.open.items.append(item)
                self.open.closed_t = t
                self.open = None
        elif hasattr(item, "text"):
            self.turns.append(LedgerTurn(n=0, items=[item], closed_t=t))

    def server(self, kind: str, t: float) -> LedgerTurn | None:
        """A server message of ``kind`` was read at ``t``; returns the turn it completed, if any."""
        turn = self.oldest_pending()
        if turn is None:
            return None
        if kind in PROGRESS_KINDS:
            turn.progress_t = t
        elif kind == "turn_complete":
            turn.answered_t = t
            self.turns.remove(turn)
            self.answered += 1
            return turn
        return None

    def reconnected(self, t: float) -> list[Any]:
        """A new connection is up at ``t``: the messages to send on it first (``resend()``), timers restarted."""
        items = self.resend()
        for turn in self.turns:
            turn.sends += 1
            self.resent_turns += 1
            if turn.closed:
                turn.progress_t = t
        self._fired.clear()
        return items

    # -- output -----------------------------------------------------------------------------------
    def resend(self) -> list[Any]:
        """Every unanswered turn's messages, oldest first, the open activity included."""
        return [item for turn in self.turns for item in turn.items]

    def oldest_pending(self) -> LedgerTurn | None:
        """The oldest closed turn still waiting for its answer."""
        return next((turn for turn in self.turns if turn.closed), None)

    @property
    def pending(self) -> int:
        """Closed turns without an answer (an open activity cannot be answered yet)."""
        return sum(1 for turn in self.turns if turn.closed)

    def watchdog(self, t: float) -> tuple[LedgerTurn, float] | None:
        """The oldest pending turn if it got no response for ``watchdog_s`` (once per connection), and how long."""
        if self.watchdog_s is None:
            return None
        turn = self.oldest_pending()
        if turn is None or id(turn) in self._fired:
            return None
        assert turn.closed_t is not None
        since = max(turn.closed_t, turn.progress_t or turn.closed_t)
        if t - since < self.watchdog_s:
            return None
        self._fired.add(id(turn))
        return turn, t - since
