"""The turn book of the client core (``connection.py``): every user turn, where it went, what the server did.

No I/O, no policy.  The core tells the ledger every message it hands out (``add``) and the
ledger files it under its turn: an activity (ActivityStart, its audio, ActivityEnd) or a text
turn (the greeting prompt, turn 0).  Tool replies belong to no turn.  For each turn it keeps
its messages (to re-send them), the connection and client-message indices they last went out
with (to compare with ``lastConsumedClientMessageIndex``), and the server's evidence on that
connection: heard (input transcription), generating (audio, transcript, tool call),
``generation_complete``, answered (``turn_complete``) or interrupted (barge-in).

Attribution: the server answers in order, so a server message is about the oldest closed turn
that is not answered yet (``head``).  A turn the core gave up on (``dropped``: the unanswered
greeting) still takes a late answer until a user turn closes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workbench.core.events import ClientMsg, ServerMsg
from workbench.core.sender import Outgoing, TextTurn, ToolReply

# Server message kinds that show the model is generating the head turn's answer.
PROGRESS_KINDS = frozenset({ServerMsg.MODEL_AUDIO, ServerMsg.MODEL_TEXT, ServerMsg.OUTPUT_TRANSCRIPTION,
                            ServerMsg.TOOL_CALL, ServerMsg.GENERATION_COMPLETE})


@dataclass
class LedgerTurn:
    """One user turn: its messages in order and what happened to it on its latest connection."""

    n: int  # 0: a text turn (greeting prompt); 1, 2, ...: activities
    items: list[Any] = field(default_factory=list)
    closed_t: float | None = None  # ActivityEnd (or the text turn) handed out, first time
    conn: int | None = None  # connection its messages last went out on
    indices: list[int] = field(default_factory=list)  # client-message index of each item on ``conn``
    due_t: float | None = None  # closing message handed out on ``conn``: an answer is due from here
    heard_t: float | None = None  # input transcription for it on ``conn``
    progress_t: float | None = None  # last generation message for it on ``conn``
    generated_t: float | None = None  # generation_complete for it
    answered_t: float | None = None  # turn_complete (or interrupted) for it
    audio_s: float = 0.0  # model audio of its answer so far, seconds (turn_complete waits for its playback)
    interrupted: bool = False
    sends: int = 0  # connections its messages went out on (1 + re-sends)
    dropped: bool = False  # the core stopped waiting for it (greeting retried once)
    waited_longer: bool = False  # the watchdog saw it heard and chose to wait (recorded once per connection)

    @property
    def closed(self) -> bool:
        return self.closed_t is not None

    @property
    def answered(self) -> bool:
        return self.answered_t is not None

    @property
    def done_in_context(self) -> bool:
        """Its answer is complete in the server's context: a handle taken now holds turn and answer."""
        return self.answered_t is not None or self.generated_t is not None

    def on_connection(self, conn: int, first_index: int, t: float) -> None:
        """Its messages so far go out again, on connection ``conn`` from index ``first_index``; evidence resets."""
        self.conn = conn
        self.indices = list(range(first_index, first_index + len(self.items)))
        self.due_t = t if self.closed else None
        self.heard_t = self.progress_t = self.generated_t = self.answered_t = None
        self.audio_s = 0.0
        self.interrupted = self.waited_longer = False
        self.sends += 1


class TurnLedger:
    """Every turn of the session, oldest first; items of turns a clean handle covers are let go (``forget``)."""

    def __init__(self) -> None:
        self.turns: list[LedgerTurn] = []
        self.open: LedgerTurn | None = None
        self.activities = 0
        self._swallow_turn_complete = False  # an interrupted answer's turn_complete is still to come

    def add(self, item: Outgoing | TextTurn | ToolReply, t: float) -> LedgerTurn | None:
        """``item`` is handed out at ``t``; returns its turn (None: not part of a turn: a tool reply, or audio
        outside any activity).  Anything but the three message types raises TypeError."""
        match item:
            case Outgoing(msg=ClientMsg.ACTIVITY_START):
                self.activities += 1
                self.open = LedgerTurn(n=self.activities, items=[item])
                self.turns.append(self.open)
                return self.open
            case Outgoing(msg=ClientMsg.AUDIO | ClientMsg.ACTIVITY_END as msg):
                turn = self.open
                if turn is None:
                    return None
                turn.items.append(item)
                if msg == ClientMsg.ACTIVITY_END:
                    turn.closed_t = t
                    self.open = None
                    self._swallow_turn_complete = False
                    for old in self.turns:  # a user turn closed: a late answer now belongs to it, not to these
                        if old.dropped and not old.answered:
                            old.answered_t = t
                return turn
            case TextTurn():
                turn = LedgerTurn(n=0, items=[item], closed_t=t)
                self.turns.append(turn)
                return turn
            case ToolReply():
                return None
        raise TypeError(f"the ledger files Outgoing, TextTurn and ToolReply, not {type(item).__name__}")

    def head(self) -> LedgerTurn | None:
        """The oldest closed turn without its answer: the one server messages are about."""
        return next((turn for turn in self.turns if turn.closed and not turn.answered), None)

    def server(self, kind: str, t: float, audio_s: float = 0.0) -> tuple[LedgerTurn | None, str | None]:
        """A server message of ``kind`` at ``t`` (``audio_s`` of model audio): (the turn it concerns, what it
        did: answered|interrupted|None)."""
        if kind == ServerMsg.TURN_COMPLETE and self._swallow_turn_complete:
            self._swallow_turn_complete = False
            return None, None
        turn = self.head()
        if turn is None:
            return None, None
        if kind == ServerMsg.INPUT_TRANSCRIPTION:
            turn.heard_t = turn.heard_t or t
        elif kind in PROGRESS_KINDS:
            turn.progress_t = t
            turn.audio_s += audio_s
            if kind == ServerMsg.GENERATION_COMPLETE:
                turn.generated_t = t
        elif kind == ServerMsg.INTERRUPTED:
            turn.answered_t = t
            turn.interrupted = True
            self._swallow_turn_complete = True
            return turn, "interrupted"
        elif kind == ServerMsg.TURN_COMPLETE:
            turn.answered_t = t
            return turn, "answered"
        return turn, None

    def pending(self) -> list[LedgerTurn]:
        """Closed turns still waiting for an answer (dropped ones excluded)."""
        return [turn for turn in self.turns if turn.closed and not turn.answered and not turn.dropped]

    def unanswered(self) -> list[LedgerTurn]:
        """Turns without an answer, the open activity included, oldest first."""
        return [turn for turn in self.turns if not turn.answered and not turn.dropped]

    def forget(self, turns: list[LedgerTurn]) -> None:
        """A clean handle holds these answered turns: their messages need never go out again."""
        for turn in turns:
            turn.items = []
            turn.indices = []

    @property
    def answered(self) -> int:
        return sum(1 for turn in self.turns if turn.answered and not turn.dropped)
