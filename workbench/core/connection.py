"""The bridge's client core: one Live session's connections, turns and recovery, with no I/O.

Theory of operation (like websockets' ``protocol.py`` and the emulator's ``core.py``): the
asyncio shell (``bridge.py``) feeds the core what happened, with the session clock ``t``:
``start``, ``opened``, ``connect_failed``, ``lost`` (the socket closed or a send failed),
``server`` (one parsed server message, ``Incoming``), ``send`` (a message from the mic side or
the greeting), ``tool_done``, ``input_done`` and ``tick``.  Each returns the actions to carry
out, in order: ``Send`` (write on connection N), ``Connect`` (close the current socket first,
then open connection N, resuming with a handle), ``RunTool`` / ``CancelTool``, ``Record`` (an
event for the recording: every decision is a ``Client`` event with its action and reason as
enum values) and ``GiveUp`` (terminal).  ``next_deadline()`` says when ``tick`` has work.

Rules (the why of each is beside the code):

- Exactly once.  A resumption handle is a snapshot of the conversation when the server made it
  (issue 12, item 4).  The core keeps the latest *clean* handle: one whose snapshot holds only
  turns whose answer was complete (``generation_complete``, ``turn_complete`` or barge-in), so
  resuming with it neither repeats an answer the model already gave nor leaves a turn the
  model heard sitting unanswered in its context.  With ``lastConsumedClientMessageIndex``
  (transparent resumption) the handle says which client messages it holds; without it, every
  turn closed before the handle arrived is held and an activity still open is not (a user turn
  enters the context at its ActivityEnd), so a handle is clean when no closed turn awaits its answer.
- An empty answer (``turn_complete`` with no content since the turn went out, python-genai #2117) is
  no answer: the turn is re-sent from the last clean handle at once (its snapshot lacks the turn).
  After a resume every turn the handle does not hold is re-sent in full, in order; a turn it
  holds never is.  Without resumption (or without any clean handle) only unanswered turns go.
- Bounded recovery.  A turn goes out at most ``1 + max_resends`` times (the greeting twice:
  after that the core stops waiting for it and the mic opens); an answered turn that a resumed
  handle lacks and that has gone out that often already stays out (``skip_resend``,
  ``resend_limit``: its context is lost to the conversation, which the emulator's log calls
  ``lost_turn``, rather than re-sent on every resume); at most ``max_reconnects``
  reconnects in any ``reconnect_window_s``, each tried at most ``max_connect_attempts`` times in a
  row (a resume rejected because the server still counts the old connection open is retried
  later); then ``GiveUp`` with the reason.
- Watchdog and dead connection.  An answer is due from the moment a turn's closing message
  goes out on a connection.  No response for ``watchdog_s``: reconnect and re-send.  If the
  server showed it heard the turn (its input transcription) the core waits longer, up to
  ``heard_timeout_s`` (a latency spike is not a dead session); so does the greeting, a text turn
  that never gets a transcription.  After ``generation_complete`` only ``turn_complete`` is
  missing, which waits for the answer's playback: the core waits that long plus ``watchdog_s``,
  then counts the turn answered.  No server frame at all for
  ``dead_connection_s`` while an answer is due: the connection is dead (this, not keepalive
  pongs, which the real service sends 8-30 s late, finds a stalled server).
- goAway.  Finish the answer in flight and wait for a clean handle that holds it, until
  ``timeLeft`` minus ``go_away_margin_s``; then close the old socket first (a resume while it
  is open is rejected with 1011 live, aicc2025/sip-to-ai PR #14) and resume.  Meanwhile new
  user messages are held, and go out on the new connection in order.
- Barge-in.  ``interrupted`` ends the head turn's answer: it counts as answered, never re-sent.
  ``toolCallCancellation`` cancels the running tool call; its reply is never sent.

State is one enum; every transition goes through ``_to`` and its table; a call in a state that
does not allow it raises ``InvalidState``.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from workbench.core.errors import InvalidState
from workbench.core.events import Client, Event, Watchdog
from workbench.core.ledger import LedgerTurn, TurnLedger

# The client-message index the first message after ``setup`` gets on a connection, for comparing
# with ``lastConsumedClientMessageIndex`` (counted per connection from 0, the setup not counted, as the
# emulator does; the SDK documents only "index of last message sent by client that is included in state").
FIRST_INDEX = 0


class State(enum.Enum):
    IDLE = "idle"  # not connected yet
    CONNECTING = "connecting"  # a Connect is being carried out
    OPEN = "open"
    DRAINING = "draining"  # goAway: finishing the answer in flight before switching
    DONE = "done"  # the session ended normally
    GAVE_UP = "gave_up"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.IDLE: frozenset({State.CONNECTING, State.GAVE_UP}),
    State.CONNECTING: frozenset({State.CONNECTING, State.OPEN, State.GAVE_UP, State.DONE}),
    State.OPEN: frozenset({State.CONNECTING, State.DRAINING, State.GAVE_UP, State.DONE}),
    State.DRAINING: frozenset({State.CONNECTING, State.GAVE_UP, State.DONE}),
    State.DONE: frozenset(),
    State.GAVE_UP: frozenset(),
}
CONNECTED = frozenset({State.OPEN, State.DRAINING})  # a connection is up: server messages and timers count


class Act(enum.StrEnum):
    """``Client.action`` values."""

    RECONNECT = "reconnect"
    RESEND = "resend"
    SKIP_RESEND = "skip_resend"
    WAIT_LONGER = "wait_longer"
    GIVE_UP = "give_up"
    CLOSE = "close"
    INTERRUPTED = "interrupted"
    DRAIN = "drain"
    CANCEL_TOOL = "cancel_tool"


class Reason(enum.StrEnum):
    """``Client.reason`` values."""

    GO_AWAY = "go_away"
    CLOSED = "closed"
    SEND_FAILED = "send_failed"
    WATCHDOG = "watchdog"
    DEAD_CONNECTION = "dead_connection"
    RESUME_REJECTED = "resume_rejected"
    HANDLE_INVALID = "handle_invalid"
    CONNECT_FAILED = "connect_failed"
    RESEND_LIMIT = "resend_limit"
    RECONNECT_LIMIT = "reconnect_limit"
    GREETING_UNANSWERED = "greeting_unanswered"
    BARGE_IN = "barge_in"
    SERVER_CANCELLED = "server_cancelled"
    CONSUMED_BY_SERVER = "consumed_by_server"
    HEARD_BY_SERVER = "heard_by_server"
    NOT_IN_HANDLE = "not_in_handle"
    RESPONSE_TIMEOUT = "response_timeout"
    EMPTY_ANSWER = "empty_answer"
    ANSWER_COMPLETE = "answer_complete"
    RECONNECT_OFF = "reconnect_off"
    INPUT_DONE = "input_done"


# -- what the shell feeds in ----------------------------------------------------------------------

@dataclass(frozen=True)
class Incoming:
    """One fact of a server message (``live.incoming`` splits an SDK message into these)."""

    kind: str  # the kinds of live.describe_server_message
    handle: str | None = None  # session_resumption_update
    resumable: bool | None = None
    last_consumed: int | None = None  # lastConsumedClientMessageIndex
    time_left_s: float | None = None  # go_away
    calls: tuple[tuple[str, str, dict[str, Any]], ...] = ()  # tool_call: (id, name, args)
    call_ids: tuple[str, ...] = ()  # tool_call_cancellation
    audio_s: float = 0.0  # model_audio: seconds of audio in the message


# -- what the core asks for -----------------------------------------------------------------------

@dataclass(frozen=True)
class Send:
    """Write ``item`` on connection ``conn`` (skip it if that connection is gone).

    ``turn`` and ``attempt`` (1 + re-sends) say which turn the item belongs to, None for a tool
    reply; the shell records them on the ``Sent`` event so no reader has to infer them.
    """

    item: Any
    conn: int
    turn: int | None = None
    attempt: int | None = None


@dataclass(frozen=True)
class Connect:
    """Close the current socket if any (and wait for it), wait ``delay_s``, open ``conn`` resuming ``handle``."""

    conn: int
    handle: str | None
    delay_s: float = 0.0
    retry: bool = False  # another attempt of the same reconnect (the previous connect failed)


@dataclass(frozen=True)
class RunTool:
    call_id: str
    name: str
    args: dict[str, Any]
    conn: int


@dataclass(frozen=True)
class CancelTool:
    call_ids: tuple[str, ...]


@dataclass(frozen=True)
class Record:
    event: Event


@dataclass(frozen=True)
class GiveUp:
    """Terminal: stop the session; ``reason`` is a ``Reason`` value."""

    reason: str
    detail: str


Action = Send | Connect | RunTool | CancelTool | Record | GiveUp


@dataclass(frozen=True)
class RecoveryConfig:
    """The core's bounds; every field is recorded in session.json (``describe``)."""

    reconnect: bool = True
    watchdog_s: float | None = 5.0  # no response this long after a turn went out: reconnect (None: off)
    watchdog_action: str = "reconnect"  # or "none": record only
    heard_timeout_s: float = 20.0  # the server heard the turn: wait this long for the answer before reconnecting
    dead_connection_s: float | None = 8.0  # no server frame at all this long while an answer is due: dead
    max_resends: int = 2  # re-sends of one user turn (the greeting: 1)
    max_reconnects: int = 5  # connects after the first, in any window of...
    reconnect_window_s: float = 60.0
    max_connect_attempts: int = 6  # failed connects in a row (backed off 0.25 s, 0.5 s, ... up to 2 s) per reconnect
    go_away_margin_s: float = 5.0  # switch this long before goAway's timeLeft runs out
    response_timeout_s: float = 10.0  # after input ends, when no watchdog can recover: stop waiting
    greeting_timeout_s: float = 15.0  # the greeting still unanswered this long after it went out: open the mic
    resume: bool = True  # resume with handles (else every connection starts a new conversation)

    def __post_init__(self) -> None:
        if self.watchdog_action not in ("reconnect", "none"):
            raise ValueError(f"watchdog action must be 'reconnect' or 'none', not {self.watchdog_action!r}")
        if self.watchdog_s is not None and not self.watchdog_s > 0:
            raise ValueError(f"watchdog must be > 0 s (or None for off), got {self.watchdog_s}")
        if self.max_resends < 0 or self.max_reconnects < 0 or self.max_connect_attempts < 0:
            raise ValueError("max resends, reconnects and connect attempts must be >= 0")
        if not self.heard_timeout_s > 0 or (self.dead_connection_s is not None and not self.dead_connection_s > 0):
            raise ValueError("the heard timeout and the dead-connection timeout must be > 0 s")

    @property
    def recovers(self) -> bool:
        return self.reconnect and self.watchdog_s is not None and self.watchdog_action == "reconnect"

    def describe(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _name(turn: LedgerTurn) -> str:
    return "greeting" if turn.n == 0 else f"turn {turn.n}"


@dataclass
class _Handle:
    value: str
    t: float
    covers: list[LedgerTurn] = field(default_factory=list)  # turns whose messages the snapshot holds


class ClientCore:
    """One session's connection life; see the module docstring for the rules."""

    def __init__(self, config: RecoveryConfig | None = None) -> None:
        self.config = config or RecoveryConfig()
        self.state = State.IDLE
        self.ledger = TurnLedger()
        self.conn = 0
        self.next_index = FIRST_INDEX
        self.clean: _Handle | None = None  # latest clean handle
        self.connects: deque[float] = deque()  # times of connects after the first, for the window
        self.reconnects = 0
        self.connect_failures = 0
        self.last_server_t: float | None = None
        self.go_away_deadline: float | None = None
        self.input_done_t: float | None = None
        self.tools: dict[str, int] = {}  # running tool call id -> connection
        self.gave_up: GiveUp | None = None
        self.connect_handle: str | None = None  # the handle the pending Connect resumes with

    # -- state ------------------------------------------------------------------------------------
    def _to(self, new: State) -> None:
        if new not in TRANSITIONS[self.state]:
            raise InvalidState(f"client core: {self.state.value} -> {new.value} is not a transition")
        self.state = new

    def _expect(self, *states: State) -> None:
        if self.state not in states:
            raise InvalidState(f"client core is {self.state.value}")

    @property
    def finished(self) -> bool:
        return self.state in (State.DONE, State.GAVE_UP)

    @property
    def greeting_settled(self) -> bool:
        """The greeting (turn 0) was answered or given up on: the mic may open."""
        return all(t.answered or t.dropped for t in self.ledger.turns if t.n == 0)

    def _client(self, t: float, action: Act, reason: Reason, turn: int | None = None, attempt: int | None = None,
                handle: str | None = None, detail: str | None = None) -> Record:
        return Record(Client(t=t, action=action.value, reason=reason.value, conn=self.conn or None, turn=turn,
                             attempt=attempt, handle=handle, detail=detail))

    # -- inputs -----------------------------------------------------------------------------------
    def start(self, t: float) -> list[Action]:
        """Open the first connection."""
        self._expect(State.IDLE)
        self._to(State.CONNECTING)
        self.conn = 1
        return [Connect(1, None)]

    def opened(self, t: float, conn: int) -> list[Action]:
        """Connection ``conn`` is set up: re-send what its handle does not hold, then what was held back."""
        self._expect(State.CONNECTING)
        if conn != self.conn:
            raise InvalidState(f"client core: opened connection {conn}, expected {self.conn}")
        self._to(State.OPEN)
        self.next_index = FIRST_INDEX
        self.last_server_t = t
        self.go_away_deadline = None
        self.connect_failures = 0
        self.tools.clear()  # tool calls belong to the connection that made them
        out: list[Action] = []
        # connect_handle is the clean handle's value: server messages are ignored while connecting
        covers = self.clean.covers if self.connect_handle is not None and self.clean is not None else None
        resumed = covers is not None
        covered = {id(x) for x in covers or []}
        for turn in self.ledger.turns:
            if turn.dropped or id(turn) in covered or not turn.items:
                continue
            if turn.answered and not resumed:
                continue  # a new conversation: answered turns are gone with the old one either way
            if turn.answered and turn.sends >= self._max_sends(turn):
                # answered after the snapshot and already sent as often as a turn may be: its context stays out of
                # the resumed conversation (the bound holds on every resume; a resume does not reset it)
                out.append(self._client(t, Act.SKIP_RESEND, Reason.RESEND_LIMIT, turn=turn.n, attempt=turn.sends,
                                        handle=self.connect_handle,
                                        detail=f"answered after the handle's snapshot; sent {turn.sends} times"))
                continue
            if turn.sends > 0:
                # answered after the handle's snapshot was taken: the resumed context lacks it, so it goes again
                note = "answered after the handle's snapshot" if turn.answered else None
                out.append(self._client(t, Act.RESEND, Reason.NOT_IN_HANDLE if resumed else Reason.CLOSED,
                                        turn=turn.n, attempt=turn.sends + 1, handle=self.connect_handle,
                                        detail=note))
            turn.on_connection(conn, self.next_index, t)
            self.next_index += len(turn.items)
            out += [Send(item, conn, turn.n, turn.sends) for item in turn.items]
        for turn in covers or []:
            if turn.closed and not turn.answered and not turn.dropped:
                out.append(self._client(t, Act.SKIP_RESEND, Reason.CONSUMED_BY_SERVER, turn=turn.n,
                                        handle=self.connect_handle))
        return out

    def connect_failed(self, t: float, conn: int, code: int | None, why: str) -> list[Action]:
        """Opening ``conn`` failed (``code``: the close code the server sent, if any)."""
        self._expect(State.CONNECTING)
        if conn == 1 and self.reconnects == 0:
            return self._give_up(t, Reason.CONNECT_FAILED, why)
        self.connect_failures += 1
        reason = Reason.CONNECT_FAILED
        handle = self._resume_handle()
        if handle is not None and code == 1011:
            reason = Reason.RESUME_REJECTED  # the old connection may still be open server-side: retry later
        elif handle is not None and code == 1008:
            reason = Reason.HANDLE_INVALID  # expired or unknown: start a new conversation instead
            self.clean = None
        if self.connect_failures > self.config.max_connect_attempts:
            return self._give_up(t, Reason.CONNECT_FAILED, f"{self.connect_failures} connect attempts failed; "
                                                            f"last: {reason.value}: {why}")
        # a retry of the same reconnect: backed off, bounded by max_connect_attempts, not by the reconnect window
        return self._reconnect(t, reason, why, delay_s=min(2.0, 0.25 * self.connect_failures), retry=True)

    def lost(self, t: float, conn: int, reason: Reason, detail: str) -> list[Action]:
        """Connection ``conn`` closed or a send on it failed (``reason``: closed | send_failed)."""
        if conn != self.conn or self.state not in CONNECTED:
            return []  # an old connection, or already being replaced
        return self._reconnect(t, reason, detail)

    def send(self, t: float, item: Any) -> list[Action]:
        """A message from the mic side (or the greeting): filed under its turn, sent now or after the switch."""
        if self.finished:
            return []
        turn = self.ledger.add(item, t)
        if turn is None:
            return []  # not a turn's message: nothing the core sends on its own behalf
        if self.state != State.OPEN:
            return []  # held in the ledger; ``opened`` sends it on the next connection
        if turn.conn != self.conn:
            turn.conn, turn.indices, turn.sends = self.conn, [], turn.sends + 1
        turn.indices.append(self.next_index)
        self.next_index += 1
        if turn.closed and turn.due_t is None:
            turn.due_t = t
        return [Send(item, self.conn, turn.n, turn.sends)]

    def tool_done(self, t: float, call_id: str, reply: Any) -> list[Action]:
        """A tool call finished: its reply goes out if the call is still live on the current connection."""
        conn = self.tools.pop(call_id, None)
        if conn != self.conn or self.state not in CONNECTED:
            return []
        self.next_index += 1
        return [Send(reply, self.conn)]

    def server(self, t: float, conn: int, msg: Incoming) -> list[Action]:
        """One fact of a server message read on connection ``conn``."""
        if conn != self.conn or self.state not in CONNECTED:
            return []
        self.last_server_t = t
        out: list[Action] = []
        turn, what = self.ledger.server(msg.kind, t, audio_s=msg.audio_s)
        if what == "interrupted" and turn is not None:
            out.append(self._client(t, Act.INTERRUPTED, Reason.BARGE_IN, turn=turn.n, attempt=turn.sends))
        if what == "answered" and turn is not None and turn.progress_t is None and self.config.recovers:
            turn.answered_t = None  # nothing came: the turn is in the context, unanswered
            return out + self._reconnect(t, Reason.EMPTY_ANSWER, f"turn_complete with no content for {_name(turn)}",
                                         turn=turn.n)
        if msg.kind == "session_resumption_update":
            self._handle_update(t, msg)
        elif msg.kind == "tool_call":
            for call_id, name, args in msg.calls:
                self.tools[call_id] = conn
                out.append(RunTool(call_id, name, args, conn))
        elif msg.kind == "tool_call_cancellation":
            ids = tuple(i for i in msg.call_ids if self.tools.pop(i, None) is not None)
            out.append(self._client(t, Act.CANCEL_TOOL, Reason.SERVER_CANCELLED,
                                    detail=",".join(msg.call_ids) + ("" if ids else " (none running)")))
            if ids:
                out.append(CancelTool(ids))
        elif msg.kind == "go_away":
            left = msg.time_left_s if msg.time_left_s is not None else 0.0
            if not self.config.reconnect:
                return out  # ride it out until the server closes
            if self.state == State.OPEN:
                self._to(State.DRAINING)
                # finish by timeLeft minus the margin, but keep at least half of a short timeLeft for it
                self.go_away_deadline = t + max(left - self.config.go_away_margin_s, left / 2)
                out.append(self._client(t, Act.DRAIN, Reason.GO_AWAY, detail=f"time left {left:g} s"))
        if self.state == State.DRAINING:
            out += self._maybe_switch(t)
        return out + self._maybe_done(t)

    def input_done(self, t: float) -> list[Action]:
        """The mic side ended: no new turns; the session ends when every answer is in (or the core gives up)."""
        self.input_done_t = t
        return self._maybe_done(t)

    def tick(self, t: float) -> list[Action]:
        """Timers: watchdog, dead connection, goAway deadline, the response timeout after input ended."""
        if self.finished:
            return []
        out: list[Action] = []
        if self.state == State.DRAINING:
            out += self._maybe_switch(t)
        if self.state in CONNECTED:
            out += self._watch(t)
        for turn in self._greeting_waiting():
            if t >= self._greeting_deadline(turn):
                turn.dropped = True  # whatever the watchdog does: the user is not kept waiting any longer
                out.append(self._client(t, Act.SKIP_RESEND, Reason.GREETING_UNANSWERED, turn=0, attempt=turn.sends,
                                        detail=f"greeting unanswered for {self.config.greeting_timeout_s:g} s; "
                                               "opening the mic"))
        if not self.finished and self.input_done_t is not None and not self.config.recovers:
            if t >= self.input_done_t + self.config.response_timeout_s and self.ledger.pending():
                out += self._give_up(t, Reason.RESPONSE_TIMEOUT,
                                     f"{len(self.ledger.pending())} turn(s) unanswered "
                                     f"{self.config.response_timeout_s:g} s after the input ended")
        return out + self._maybe_done(t)

    def next_deadline(self) -> float | None:
        """When ``tick`` next has something to do (None: only when an input arrives)."""
        if self.finished:
            return None
        due: list[float] = []
        if self.state == State.DRAINING and self.go_away_deadline is not None:
            due.append(self.go_away_deadline)
        head = self._due_turn()
        if head is not None and head.due_t is not None and self.state in CONNECTED:
            due += [d for d, _ in self._deadlines(head)]
        if self.input_done_t is not None and not self.config.recovers:
            due.append(self.input_done_t + self.config.response_timeout_s)
        due += [self._greeting_deadline(turn) for turn in self._greeting_waiting()]
        return min(due) if due else None

    # -- decisions --------------------------------------------------------------------------------
    def _greeting_waiting(self) -> list[LedgerTurn]:
        """The greeting, if it went out and is neither answered nor given up on."""
        return [turn for turn in self.ledger.turns
                if turn.n == 0 and turn.closed and not turn.answered and not turn.dropped]

    def _greeting_deadline(self, turn: LedgerTurn) -> float:
        assert turn.closed_t is not None
        return turn.closed_t + self.config.greeting_timeout_s

    def _max_sends(self, turn: LedgerTurn) -> int:
        return 2 if turn.n == 0 else 1 + self.config.max_resends

    def _resume_handle(self) -> str | None:
        return self.clean.value if self.config.resume and self.clean is not None else None

    def _handle_update(self, t: float, msg: Incoming) -> None:
        """Keep the handle if its snapshot holds only turns whose answers are complete (see the module rules)."""
        if not msg.handle or msg.resumable is False:
            return
        here = [turn for turn in self.ledger.turns if turn.conn == self.conn and turn.indices]
        if msg.last_consumed is None:
            # Without the index: every closed turn sent so far is in the snapshot; an activity still open is
            # not (a user turn enters the context at its ActivityEnd), so it is re-sent whole after a resume.
            held = [turn for turn in here if turn.closed]
            later = [turn for turn in here if not turn.closed]
        else:
            held = [turn for turn in here if turn.indices[0] <= msg.last_consumed]
            later = [turn for turn in here if turn.indices[0] > msg.last_consumed]
        if any(not turn.done_in_context and not turn.dropped for turn in held):
            return  # it holds a turn whose answer is not complete: resuming it would strand or repeat that turn
        skip = {id(turn) for turn in later}
        covers = [turn for turn in self.ledger.turns if turn.done_in_context and id(turn) not in skip]
        self.clean = _Handle(msg.handle, t, covers=covers)
        self.ledger.forget([turn for turn in covers if turn.answered])

    def _deadlines(self, head: LedgerTurn) -> list[tuple[float, Reason]]:
        cfg = self.config
        assert head.due_t is not None
        if head.generated_t is not None:
            # The answer is complete in the context; turn_complete follows its playback time (livekit/agents
            # #6421).  Past that and a watchdog period, stop waiting for it: answered, nothing to re-send.
            return [(head.generated_t + head.audio_s + (cfg.watchdog_s or cfg.response_timeout_s),
                     Reason.ANSWER_COMPLETE)]
        since = max(head.due_t, head.progress_t or head.due_t)
        out: list[tuple[float, Reason]] = []
        if cfg.watchdog_s is not None and not self.tools:  # while our tool runs, the answer waits on us
            # a text turn (the greeting) never gets an input transcription: it waits as long as a heard turn
            patient = head.heard_t is not None or head.n == 0
            out.append((since + (cfg.heard_timeout_s if patient else cfg.watchdog_s), Reason.WATCHDOG))
            if head.heard_t is not None and not head.waited_longer:
                out.append((since + cfg.watchdog_s, Reason.HEARD_BY_SERVER))
        if cfg.dead_connection_s is not None and self.config.reconnect:
            out.append((max(since, self.last_server_t or since) + cfg.dead_connection_s, Reason.DEAD_CONNECTION))
        return out

    def _due_turn(self) -> LedgerTurn | None:
        pending = self.ledger.pending()
        return pending[0] if pending else None

    def _watch(self, t: float) -> list[Action]:
        head = self._due_turn()
        if head is None or head.due_t is None:
            return []
        due = sorted((d, r) for d, r in self._deadlines(head) if d <= t)
        if not due:
            return []
        _, reason = due[0]
        waited = t - max(head.due_t, head.progress_t or head.due_t)
        what = _name(head)
        if reason == Reason.ANSWER_COMPLETE:
            head.answered_t = t
            return [self._client(t, Act.SKIP_RESEND, Reason.ANSWER_COMPLETE, turn=head.n, attempt=head.sends,
                                 detail=f"generation complete, no turn_complete {waited:.1f} s later")]
        if reason == Reason.HEARD_BY_SERVER:
            head.waited_longer = True
            return [self._client(t, Act.WAIT_LONGER, Reason.HEARD_BY_SERVER, turn=head.n, attempt=head.sends,
                                 detail=f"heard, no answer for {waited:.1f} s; waiting up to "
                                        f"{self.config.heard_timeout_s:g} s")]
        if reason == Reason.WATCHDOG and self.config.watchdog_action == "none":
            head.due_t = None  # fire once per connection
            return [Record(Watchdog(t=t, after_s=round(waited, 3), action="none (recorded only)"))]
        out: list[Action] = []
        if reason == Reason.WATCHDOG:
            will = "reconnect and re-send" if head.sends < self._max_sends(head) else "give up on"
            out.append(Record(Watchdog(t=t, after_s=round(waited, 3), action=f"{will} {what}")))
        return out + self._reconnect(t, reason, f"no response to {what} for {waited:.1f} s", turn=head.n)

    def _limits(self, t: float) -> list[Action] | None:
        """Before a reconnect: the oldest pending turn went out as often as allowed -> drop it or give up."""
        head = self._due_turn()
        if head is None or head.sends < self._max_sends(head):
            return None
        if head.n == 0:
            head.dropped = True  # retried once: the mic opens, the session goes on without a greeting
            return [self._client(t, Act.SKIP_RESEND, Reason.GREETING_UNANSWERED, turn=0, attempt=head.sends,
                                 detail=f"greeting unanswered after {head.sends} sends; opening the mic")]
        return self._give_up(t, Reason.RESEND_LIMIT, f"turn {head.n} unanswered after {head.sends} sends",
                             turn=head.n, attempt=head.sends)

    def _maybe_switch(self, t: float) -> list[Action]:
        """DRAINING: switch once the answer in flight is done and a clean handle holds it, or at the deadline."""
        in_flight = bool(self.ledger.pending())
        answered_here = [turn for turn in self.ledger.turns if turn.conn == self.conn and turn.answered]
        covered = {id(x) for x in self.clean.covers} if self.clean is not None else set()
        handle_current = all(id(turn) in covered for turn in answered_here) or not self.config.resume
        deadline = self.go_away_deadline if self.go_away_deadline is not None else t
        if (not in_flight and handle_current) or t >= deadline:
            why = "answer finished" if not in_flight else "goAway deadline"
            return self._reconnect(t, Reason.GO_AWAY, why)
        return []

    def _reconnect(self, t: float, reason: Reason, detail: str, delay_s: float = 0.0,
                   turn: int | None = None, retry: bool = False) -> list[Action]:
        if not self.config.reconnect:
            return self._give_up(t, Reason.RECONNECT_OFF, f"{reason.value}: {detail}")
        limited = self._limits(t) if reason != Reason.GO_AWAY and not retry else None
        if limited is not None:
            if self.finished or reason == Reason.WATCHDOG:
                return limited + self._maybe_done(t)  # gave up, or dropped the greeting on a working connection
            return limited + self._reconnect(t, reason, detail, delay_s)
        window = self.config.reconnect_window_s
        while self.connects and self.connects[0] <= t - window:
            self.connects.popleft()
        if not retry:
            if len(self.connects) >= self.config.max_reconnects:
                return self._give_up(t, Reason.RECONNECT_LIMIT,
                                     f"{len(self.connects)} reconnects in {window:g} s; last: {reason.value}: {detail}")
            self.connects.append(t)
            self.reconnects += 1
        self._to(State.CONNECTING)
        self.conn += 1
        handle = self.connect_handle = self._resume_handle()
        return [self._client(t, Act.RECONNECT, reason, turn=turn, handle=handle, detail=detail),
                Connect(self.conn, handle, delay_s, retry)]

    def _give_up(self, t: float, reason: Reason, detail: str, turn: int | None = None,
                 attempt: int | None = None) -> list[Action]:
        self._to(State.GAVE_UP)
        self.gave_up = GiveUp(reason.value, detail)
        return [self._client(t, Act.GIVE_UP, reason, turn=turn, attempt=attempt, detail=detail), self.gave_up]

    def _maybe_done(self, t: float) -> list[Action]:
        # an activity still open when the input ended (a detector that never closed it) cannot be answered
        if self.input_done_t is not None and self.state == State.OPEN and not self.ledger.pending():
            self._to(State.DONE)
            return [self._client(t, Act.CLOSE, Reason.INPUT_DONE, detail="no answer pending")]
        return []
