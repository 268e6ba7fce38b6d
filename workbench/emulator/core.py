"""One Live API connection's session state, with no I/O (like websockets' protocol.py).

The server shell feeds ``receive(t, message)`` for each client JSON message, ``ping(t, data)`` for
each websocket ping and ``tick(t)`` from a timer; all return actions (send this JSON, send this pong,
close with this code, stop reading until).  Times are ``time.monotonic()`` seconds, so the core is
tested with plain calls and exact times.  Random draws (latency, pong delay, chunk sizes) come from a
``random.Random`` seeded by ``EmulatorConfig.seed`` and the connection number: runs are reproducible.

Wire format (Developer API, BidiGenerateContent): the client's first message is ``setup``;
then ``realtimeInput`` (audio / activityStart / activityEnd / audioStreamEnd / text),
``clientContent`` and ``toolResponse``.  Field names arrive in snake_case or camelCase and
audio in urlsafe or standard base64; both are accepted.  Server messages are camelCase, as
google-genai's ``_LiveServerMessage_from_mldev`` expects them.

Profiles: ``EmulatorConfig(profile="real")`` (the default) is the service as the public record shows
it; ``profile="ideal"`` is the forgiving server the workbench started with (instant pongs, answers
never interrupted, generationComplete and turnComplete together, 150 ms answers, live handles, goAway
only by fault, audio outside activities discarded).  Each behaviour is its own field; a field left at
``FROM_PROFILE`` takes the profile's value, any other value overrides it.

Conversation model: a conversation is the ordered list of user turns in the model's context, each
named by a hash of its audio bytes (a re-sent turn has the same bytes).  In ``real`` a resumption
handle is a snapshot of that list (and of the client message index) when it was issued; resuming
forks from the snapshot, so turns after it are forgotten.  ``duplicate_turn`` flags a turn whose
hash is already in the context; ``lost_turn`` (``Conversation.lost_turns``) a turn the server
received that is in no final context of the conversation's continuations.

Numbering: user turns (activities with audio, audioStreamEnd after audio with automatic
detection, ``realtimeInput.text`` in ``real``) are counted 1, 2, ... over the whole conversation, across
resumed connections, re-sends included; ``tool_call_turns`` and the ``no-response`` fault refer to that
number.  The greeting is not a user turn.  Client messages are indexed per connection from 0, the setup
not counted: ``lastConsumedClientMessageIndex`` is the index of the last message whose effect the
handle's snapshot holds.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import fnmatch
import hashlib
import heapq
import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workbench.core.errors import InvalidState
from workbench.core.pcm import MODEL_RATE, SENT_RATE
from workbench.emulator.faults import Fault

USER_BYTES_PER_S = SENT_RATE * 2  # 16 kHz 16-bit mono, what the Live API expects from the client
INVALID = "Request contains an invalid argument."
INTERNAL = "Internal error encountered."
# kizuna-ai-lab/sokuji #179: goAway {timeLeft: "50s"}, then close 1011 with this reason
DEADLINE = "Deadline expired before operation could complete."
REALTIME_FIELDS = ("activity_start", "audio", "media_chunks", "activity_end", "audio_stream_end", "text")
# The models the project uses (workbench/io/live.py DEFAULT_MODEL, workbench/ui/cli.py DEFAULT_LIVE_MODEL; the core
# must not import them, they pull in the SDK) and the families of Live models.
KNOWN_MODELS = ("gemini-2.5-flash-native-audio-preview-12-2025",)
MODEL_PATTERNS = ("gemini-*live*", "*native-audio*")
AUDIO_TOKENS_PER_S = 32  # Gemini counts audio at 32 tokens per second
BURST_GAP_S = 0.005  # between chunks of one burst
INTERRUPTS = "START_OF_ACTIVITY_INTERRUPTS"
RNG_PURPOSES = ("pong", "latency", "chunks", "handles", "session")


class Phase(enum.Enum):
    """A connection's life on the server's side."""

    AWAITING_SETUP = "awaiting_setup"  # only ``setup`` may come: anything else closes 1007
    SETTING_UP = "setting_up"  # setup accepted, setupComplete not sent yet (``setup_s``): a message closes 1007
    READY = "ready"  # setupComplete sent
    CLOSED = "closed"  # we closed, or the socket went away: input is ignored, nothing goes out


class Activity(enum.Enum):
    """The manual activity window as the client's signals drew it (automatic detection: stays NONE)."""

    NONE = "none"  # no activityStart yet on this connection
    OPEN = "open"  # activityStart seen, no activityEnd since
    ENDED = "ended"  # activityEnd seen, no activityStart since: audio now is ``audio_after_activity_end``


# Every change of a connection's state goes through ``SessionCore._to_phase`` / ``_to_activity`` and these tables.
# A client's bad signal is a ``Violation``, never a raise, so the tables allow what a misbehaving client can cause
# (activityStart while open re-opens the window); what they forbid would be a bug in this core: InvalidState.
PHASES: dict[Phase, frozenset[Phase]] = {
    Phase.AWAITING_SETUP: frozenset({Phase.SETTING_UP, Phase.CLOSED}),
    Phase.SETTING_UP: frozenset({Phase.READY, Phase.CLOSED}),
    Phase.READY: frozenset({Phase.CLOSED}),
    Phase.CLOSED: frozenset(),
}
ACTIVITIES: dict[Activity, frozenset[Activity]] = {
    Activity.NONE: frozenset({Activity.OPEN}),
    Activity.OPEN: frozenset({Activity.OPEN, Activity.ENDED}),
    Activity.ENDED: frozenset({Activity.OPEN}),
}


@dataclass(frozen=True)
class SendJson:
    payload: dict[str, Any]


@dataclass(frozen=True)
class SendPong:
    """Answer the websocket ping that carried ``data``; it arrived at ``ping_t`` and is answered at ``at_t``."""

    data: bytes
    ping_t: float
    at_t: float


@dataclass(frozen=True)
class Close:
    code: int
    reason: str


@dataclass(frozen=True)
class PauseReading:
    """Stop reading the socket (and so stop answering pings) until ``until_t``."""

    until_t: float


Action = SendJson | SendPong | Close | PauseReading


@dataclass(frozen=True)
class LogEntry:
    """One thing the emulator received ("in") or sent ("out"), at ``time.monotonic()`` ``t_mono``.

    Besides the message kinds, "in" has ``violation``, ``resumed``, ``resume_rejected``, ``text``, ``ping``
    and ``client_closed``; "out" has ``fault`` (a fault fired), ``close``, ``pong`` (detail: its delay),
    ``latency_spike``, ``interrupted``, ``tool_call_cancellation``, ``usage_metadata`` (logged beside the
    ``turn_complete`` it rides on) and ``session_resumption_update`` (detail: the handle or ``resumable=false``).
    A ``turn_complete`` of an answer cut by barge-in has detail ``interrupted``, of an empty answer ``empty``.
    """

    t_mono: float
    conn: int
    direction: str  # "in" | "out"
    kind: str
    n_bytes: int = 0
    detail: str | None = None


@dataclass(frozen=True)
class Violation:
    t_mono: float
    conn: int
    rule: str
    detail: str


class _FromProfile:
    def __repr__(self) -> str:
        return "FROM_PROFILE"


FROM_PROFILE: Any = _FromProfile()

# Each behaviour's value in each profile.  Sources of the "real" values are cited beside the fields.
PROFILES: dict[str, dict[str, Any]] = {
    "ideal": dict(
        pong_delay_s=(0.0, 0.0), barge_in=False, latency_s=0.15, spike_p=0.0, chunk_ms=(40, 40),
        burst_chunks=(1, 1), input_tx_s=None, turn_complete_after_playback=False, usage_metadata=False,
        transcripts_on_request=False, handle_every_s=None, snapshot_handles=False, handle_ttl_s=None,
        reject_resume_while_open=False, connection_s=None, session_s=None, outside_audio="discard",
        reject_media_chunks=False, setup_s=0.0, check_model=False, answer_text=False, session_id=False,
        flag_turns=False,
    ),
    "real": dict(
        pong_delay_s=(8.0, 30.0), barge_in=True, latency_s=None, spike_p=0.02, chunk_ms=(200, 240),
        burst_chunks=(2, 5), input_tx_s=0.2, turn_complete_after_playback=True, usage_metadata=True,
        transcripts_on_request=True, handle_every_s=1.0, snapshot_handles=True, handle_ttl_s=7200.0,
        reject_resume_while_open=True, connection_s=600.0, session_s=900.0, outside_audio="strict",
        reject_media_chunks=True, setup_s=0.1, check_model=True, answer_text=True, session_id=True,
        flag_turns=True,
    ),
}


def _pair(value: Any, name: str) -> tuple[float, float]:
    lo, hi = (value, value) if isinstance(value, int | float) else tuple(value)
    if not 0 <= lo <= hi:
        raise ValueError(f"{name} must be a number >= 0 or a range (lo, hi) with 0 <= lo <= hi, not {value!r}")
    return float(lo), float(hi)


@dataclass
class EmulatorConfig:
    """Scripted behaviour of the emulated model; ``faults`` inject failures (see ``faults.py``).

    ``profile`` ("real" or "ideal") fills every field left at ``FROM_PROFILE``; ranges ``(lo, hi)`` are
    drawn uniformly from the seeded generator.
    """

    profile: str = "real"
    seed: int = 0
    reply_s: float = 1.0  # length of each spoken answer
    # First-audio latency: fixed seconds, or None to draw it: from latency_early_s at the session's start
    # growing to latency_late_s after latency_ramp_s, with a spike of spike_s at probability spike_p
    # (livekit/agents #5408; Google forum latency threads: ~0.3 s early, 1.2-1.4 s after minutes, 7-15 s spikes).
    latency_s: float | None = FROM_PROFILE
    latency_early_s: tuple[float, float] = (0.3, 0.6)
    latency_late_s: tuple[float, float] = (1.2, 1.4)
    latency_ramp_s: float = 300.0
    spike_p: float = FROM_PROFILE  # 1.0 forces a spike on every answer, 0.0 disables them
    spike_s: tuple[float, float] = (7.0, 15.0)
    # Model audio chunk length, ms (google-gemini/cookbook #952: 9,600-11,520 bytes = 200-240 ms at 24 kHz).
    chunk_ms: tuple[float, float] = FROM_PROFILE
    burst_chunks: tuple[int, int] = FROM_PROFILE  # chunks sent back to back, bursts faster than real time
    pace: float = 2.0  # how much faster than real time the model audio is sent, on average
    input_tx_s: float | None = FROM_PROFILE  # inputTranscription this long after the turn's end (None: with answer)
    # turnComplete waits for the answer's playback time, seconds after the last audio (livekit/agents #6421, #6431)
    turn_complete_after_playback: bool = FROM_PROFILE
    usage_metadata: bool = FROM_PROFILE  # usageMetadata rides on the turnComplete message
    transcripts_on_request: bool = FROM_PROFILE  # transcriptions only when the setup asks for them
    greet: bool = True  # answer a clientContent turn (turnComplete) with a spoken greeting
    # Websocket pongs, seconds after the ping (aicc2025/sip-to-ai PR #14: measured 8-30 s; python-genai #2935).
    pong_delay_s: tuple[float, float] = FROM_PROFILE
    # activityStart during an answer interrupts it unless setup asks NO_INTERRUPTION: "If unspecified, the default
    # behavior is START_OF_ACTIVITY_INTERRUPTS" (SDK types.ActivityHandling; Live API reference,
    # ai.google.dev/api/live, realtimeInputConfig.activityHandling; DESIGN.md 8).  False: answers overlap (ideal).
    barge_in: bool = FROM_PROFILE
    # sessionResumptionUpdate about every handle_every_s (google-gemini/gemini-live-api-examples #38: ~0.9 s),
    # resumable=false while generating or a tool call is pending (SDK LiveServerSessionResumptionUpdate);
    # None: one handle after each turnComplete (ideal).
    handle_every_s: float | None = FROM_PROFILE
    snapshot_handles: bool = FROM_PROFILE  # a handle is a snapshot (resuming forgets later turns); False: live
    handle_ttl_s: float | None = FROM_PROFILE  # handles expire (ai.google.dev/gemini-api/docs/live-session: 2 h)
    # a resume while a connection of the conversation is still open closes 1011 (aicc2025/sip-to-ai PR #14)
    reject_resume_while_open: bool = FROM_PROFILE
    # Connection age limit: goAway go_away_lead_s before it (capped at half of it), then close 1011 DEADLINE
    # (ai.google.dev/gemini-api/docs/live-session: ~10 min; kizuna-ai-lab/sokuji #179: timeLeft 50 s, 1011).
    connection_s: float | None = FROM_PROFILE
    go_away_lead_s: tuple[float, float] = (50.0, 60.0)
    session_s: float | None = FROM_PROFILE  # audio-only session limit unless contextWindowCompression (15 min)
    outside_audio: str = FROM_PROFILE  # audio outside an activity: "discard" or "strict" (close 1007, omi #7611)
    reject_media_chunks: bool = FROM_PROFILE  # realtimeInput.mediaChunks closes 1007 (aicc2025/sip-to-ai #5)
    setup_s: float = FROM_PROFILE  # setup -> setupComplete; a message before setupComplete closes 1007
    check_model: bool = FROM_PROFILE  # an unknown model closes 1008 (google/adk-python #3964)
    answer_text: bool = FROM_PROFILE  # realtimeInput.text is a user turn and is answered
    session_id: bool = FROM_PROFILE  # setupComplete carries a sessionId (SDK LiveServerSetupComplete.session_id)
    flag_turns: bool = FROM_PROFILE  # flag duplicate_turn / lost_turn
    late_gap_s: float = 55.0  # no-response:late: transcript, this gap, transcript again, answer (live-api-examples #48)
    speech_dbfs: float = -45.0  # no-response:noise: an activity whose loudest chunk is quieter is not answered
    tool_call_turns: tuple[int, ...] = ()  # user turns (1-based) answered first with a toolCall
    faults: list[Fault] = field(default_factory=list)
    phrases: tuple[str, ...] = (
        "Thank you.", "That is interesting.", "Could you tell me more?", "Great.", "Next question.",
        "What was the hardest part?", "How did you solve it?",
    )

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"profile must be one of {', '.join(PROFILES)}, not {self.profile!r}")
        for name, value in PROFILES[self.profile].items():
            if getattr(self, name) is FROM_PROFILE:
                setattr(self, name, value)
        if self.outside_audio not in ("discard", "strict"):
            raise ValueError(f"outside_audio must be 'discard' or 'strict', not {self.outside_audio!r}")
        if self.reply_s <= 0 or self.pace <= 0 or (self.latency_s is not None and self.latency_s < 0):
            raise ValueError("reply_s and pace must be > 0 and latency_s >= 0")
        self.chunk_ms = _pair(self.chunk_ms, "chunk_ms")
        if self.chunk_ms[0] <= 0:
            raise ValueError("chunk_ms must be > 0")
        lo, hi = _pair(self.burst_chunks, "burst_chunks")
        if lo < 1:
            raise ValueError("burst_chunks must be >= 1")
        self.burst_chunks = (int(lo), int(hi))
        self.pong_delay_s = _pair(self.pong_delay_s, "pong_delay_s")
        for name in ("latency_early_s", "latency_late_s", "spike_s", "go_away_lead_s"):
            setattr(self, name, _pair(getattr(self, name), name))
        if not 0 <= self.spike_p <= 1:
            raise ValueError(f"spike_p must be a probability in [0, 1], not {self.spike_p!r}")
        for name in ("connection_s", "session_s", "handle_every_s", "handle_ttl_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 seconds (or None: no limit), not {value!r}")
        self.tool_call_turns = tuple(self.tool_call_turns)

    def replace(self, **changes: Any) -> EmulatorConfig:
        """A copy with ``changes``; other fields keep their values (the profile is not re-applied)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class UserTurn:
    """A user turn as the server first received it: its audio hash, number, connection and time."""

    key: str
    n: int
    conn: int
    t_mono: float


@dataclass(frozen=True)
class Snapshot:
    """What a resumption handle restores: the context (turn keys) and the consumed message index when issued."""

    handle: str
    conn: int
    t_mono: float
    context: tuple[str, ...]
    consumed_index: int | None


@dataclass
class Conversation:
    """A session across connections: what the model heard, and the branches resumption made of it.

    ``contexts`` holds each connection's context (with live handles all connections share one list);
    ``resumed_from`` maps a connection to the one whose handle it resumed.  Shared by the emulator's
    connections, like the handle -> conversation map.
    """

    id: int
    t_start: float | None = None
    user_turns: int = 0
    answers: int = 0
    handles: int = 0
    open_conns: set[int] = field(default_factory=set)
    received: dict[str, UserTurn] = field(default_factory=dict)
    contexts: dict[int, list[str]] = field(default_factory=dict)
    resumed_from: dict[int, int] = field(default_factory=dict)
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    closed_t: float | None = None
    compressed: bool = False  # contextWindowCompression set: no session time limit
    ended: bool = False  # the session time limit ended it: its handles are no longer valid

    def lost_turns(self) -> list[Violation]:
        """``lost_turn`` for each received turn in no final context, once all connections have closed.

        Final contexts are those of the connections nobody resumed from (the leaves of the resume tree).
        Asked again after a later resume, the answer reflects that resume: nothing is final while open.
        """
        if self.open_conns or not self.contexts or self.closed_t is None:
            return []
        parents = set(self.resumed_from.values())
        leaves = sorted(c for c in self.contexts if c not in parents)
        kept = {k for c in leaves for k in self.contexts[c]}
        return [Violation(self.closed_t, turn.conn, "lost_turn",
                          f"user turn {turn.n} (audio {turn.key}) received on connection {turn.conn} at "
                          f"{turn.t_mono:.3f} is in no final context (connections {leaves})")
                for turn in self.received.values() if turn.key not in kept]


@dataclass(frozen=True)
class _Out:
    """A scheduled message and how to log it when it goes out."""

    payload: dict[str, Any]
    kind: str
    n_bytes: int = 0
    detail: str | None = None


@dataclass(frozen=True)
class _HandleDue:
    """Issue a sessionResumptionUpdate when due (built then, so it snapshots that moment)."""

    periodic: bool


@dataclass
class _Answer:
    """One model turn in progress: from its scheduling to its turnComplete (or interruption)."""

    id: int
    user_turn: int | None
    end_t: float


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


def field_of(d: Any, snake: str) -> Any:
    """A proto-JSON field by its snake_case name, accepting camelCase too."""
    if not isinstance(d, dict):
        return None
    if snake in d:
        return d[snake]
    return d.get(_camel(snake))


def decode_b64(data: str) -> bytes:
    """Audio data in urlsafe (what the SDK sends) or standard base64."""
    s = data.strip()
    s += "=" * (-len(s) % 4)
    return base64.b64decode(s.replace("-", "+").replace("_", "/"), validate=True)


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """24 kHz int16 that looks like speech on a plot: a gliding harmonic voice with syllable bursts."""
    n = int(seconds * MODEL_RATE)
    t = np.arange(n) / MODEL_RATE
    rng = np.random.default_rng(seed)
    f0 = 125 + 25 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / MODEL_RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    syllables = np.clip(np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6)), 0, None) ** 0.6
    fade = np.minimum(1.0, np.minimum(t, seconds - t) / 0.02)
    return (voice * syllables * fade * 5000).astype(np.int16)


def model_known(model: str) -> bool:
    """Whether the emulated service serves ``model`` (with or without ``models/``)."""
    name = model.removeprefix("models/")
    return name in KNOWN_MODELS or any(fnmatch.fnmatchcase(name, p) for p in MODEL_PATTERNS)


def _dummy_args(decl: dict[str, Any]) -> dict[str, Any]:
    """Plausible values for a declaration's required parameters, so a tool handler has something to read."""
    schema = field_of(decl, "parameters") or field_of(decl, "parameters_json_schema") or {}
    props = field_of(schema, "properties") or {}
    values = {"string": "example", "integer": 1, "number": 1.0, "boolean": True, "array": [], "object": {}}
    return {name: values.get(str(field_of(props.get(name), "type") or "string").lower(), "example")
            for name in field_of(schema, "required") or [] if isinstance(name, str)}


def _level_dbfs(pcm: bytes) -> float:
    x = np.frombuffer(pcm[: len(pcm) // 2 * 2], "<i2").astype(np.float64)
    if x.size == 0:
        return -math.inf
    rms = math.sqrt(float(np.mean(x * x)))
    return 20 * math.log10(rms / 32768) if rms > 0 else -math.inf


class SessionCore:
    """State of one connection: setup, activity windows, scripted answers, faults, violations.

    ``phase`` (``Phase``) and ``activity`` (``Activity``) are the connection's state, changed only through the
    ``PHASES`` and ``ACTIVITIES`` tables.  Once ``CLOSED`` every input returns no actions: the shell may still
    hand in a frame that raced the close, which is not the shell's fault.
    """

    def __init__(
        self,
        config: EmulatorConfig,
        conn: int,
        conversations: dict[str, Conversation],
        new_conversation: Callable[[], Conversation],
        faults: Sequence[Fault] = (),
    ) -> None:
        self.config = config
        self.conn = conn
        self.conversations = conversations  # handle -> conversation, shared by the emulator's connections
        self.new_conversation = new_conversation
        self.faults: dict[str, Fault] = {f.name: f for f in faults}
        # One generator per purpose (str seeds hash the same in every run), so how many handles went out before
        # a ping does not change its pong's delay: the k-th draw of each kind is reproducible.
        self.rng = {purpose: random.Random(f"{config.seed}:{conn}:{purpose}") for purpose in RNG_PURPOSES}
        self.log: list[LogEntry] = []
        self.violations: list[Violation] = []
        self.phase = Phase.AWAITING_SETUP
        self.manual_activity = False
        self.resumption = False
        self.transparent = False
        self.activity_handling = INTERRUPTS
        self.want_input_tx = False
        self.want_output_tx = False
        self.conversation: Conversation | None = None
        self.context: list[str] = []  # this connection's branch of the conversation's context
        self.tools: list[dict[str, Any]] = []
        self.activity = Activity.NONE
        self.audio_in_activity = 0  # bytes since activityStart
        self.audio_since_answer = 0  # bytes, automatic detection only
        self.pending_tool: tuple[str, int] | None = None  # (call id, user turn it answers)
        self.tool_sent = False  # the pending toolCall has gone out
        self.stalled_until: float | None = None
        self.msg_index = -1  # index of the last client message after setup
        self._turn_from: int | None = None  # index of the first message of the user turn being received
        self._turn_hash = hashlib.blake2b(digest_size=8)
        self._turn_peak_db = -math.inf
        self._answers: dict[int, _Answer] = {}
        self._answer_ids = itertools.count(1)
        self._busy_until = -math.inf  # end of the last scheduled answer: answers never interleave with barge-in
        self._last_pong_t = -math.inf
        self._queue: list[tuple[float, int, int, _Out | Close | SendPong | _HandleDue]] = []
        self._seq = itertools.count()
        self._flood_next: float | None = None
        self._session_end_t: float | None = None

    # -- state ---------------------------------------------------------------
    def _to_phase(self, new: Phase) -> None:
        if new not in PHASES[self.phase]:
            raise InvalidState(f"emulator connection {self.conn}: {self.phase.value} -> {new.value} "
                               "is not a transition")
        self.phase = new

    def _to_activity(self, new: Activity) -> None:
        if new not in ACTIVITIES[self.activity]:
            raise InvalidState(f"emulator connection {self.conn}: activity {self.activity.value} -> {new.value} "
                               "is not a transition")
        self.activity = new

    @property
    def closed(self) -> bool:
        return self.phase is Phase.CLOSED

    # -- helpers -------------------------------------------------------------
    def _log(self, t: float, direction: str, kind: str, n_bytes: int = 0, detail: str | None = None) -> None:
        self.log.append(LogEntry(t, self.conn, direction, kind, n_bytes, detail))

    def _violate(self, t: float, rule: str, detail: str) -> None:
        self.violations.append(Violation(t, self.conn, rule, detail))
        self._log(t, "in", "violation", 0, f"{rule}: {detail}")

    def _at(self, t: float, item: _Out | Close | SendPong | _HandleDue, answer: int = 0) -> None:
        heapq.heappush(self._queue, (t, next(self._seq), answer, item))

    def _take_fault(self, t: float, name: str, what: str) -> Fault | None:
        """Use up a one-shot fault, logging that it fired."""
        f = self.faults.pop(name, None)
        if f is not None:
            self._log(t, "out", "fault", 0, f"{name}: {what}")
        return f

    def _uniform(self, lo_hi: tuple[float, float], purpose: str) -> float:
        lo, hi = lo_hi
        return lo if lo == hi else self.rng[purpose].uniform(lo, hi)

    @property
    def busy(self) -> bool:
        """The model is generating (an answer is scheduled and not complete) or a tool call is pending."""
        return bool(self._answers) or self.pending_tool is not None

    def connection_lost(self, t: float, detail: str) -> None:
        """The socket is gone without our Close (the client closed it, or the network did)."""
        if not self.closed:
            self._log(t, "in", "client_closed", 0, detail)
        self._mark_closed(t)

    def _mark_closed(self, t: float) -> None:
        if self.phase is not Phase.CLOSED:  # the socket may go after our own close: that is no new state
            self._to_phase(Phase.CLOSED)
        conv = self.conversation
        if conv is not None and self.conn in conv.open_conns:
            conv.open_conns.discard(self.conn)
            if not conv.open_conns:
                conv.closed_t = t

    def _close(self, t: float, code: int, reason: str) -> list[Action]:
        self._mark_closed(t)
        self._queue.clear()
        self._answers.clear()
        self._flood_next = None
        self._log(t, "out", "close", 0, f"{code} {reason}")
        return [Close(code, reason)]

    # -- input ---------------------------------------------------------------
    def receive(self, t: float, msg: Any) -> list[Action]:
        """One client message (parsed JSON; anything else is answered like Google does, with 1007)."""
        if self.closed:
            return []
        try:
            return self._receive(t, msg)
        except (TypeError, AttributeError, KeyError, IndexError, ValueError) as exc:
            # A field of the wrong type: the real server fails to parse the proto and says 1007.
            self._log(t, "in", "malformed", 0, f"{type(exc).__name__}: {exc}"[:200])
            return self._close(t, 1007, INVALID)

    def ping(self, t: float, data: bytes) -> list[Action]:
        """A websocket ping arrived: the pong goes out now or later, as the profile or ``slow-pong`` says.

        websockets would answer at once in its protocol layer; the shell hands pings here instead.
        Pongs keep their order (a later ping is never answered before an earlier one).
        """
        if self.closed:
            return []
        self._log(t, "in", "ping", len(data))
        slow = self.faults.get("slow-pong")
        delay = slow.seconds if slow is not None else self._uniform(self.config.pong_delay_s, "pong")
        at = max(t + delay, self._last_pong_t)
        self._last_pong_t = at
        if at <= t:
            self._log(t, "out", "pong", len(data), "delay 0.000 s")
            return [SendPong(data, t, t)]
        self._at(at, SendPong(data, t, at))
        return []

    def _receive(self, t: float, msg: Any) -> list[Action]:
        if not isinstance(msg, dict) or not msg:
            self._log(t, "in", "unknown", 0, "not a JSON object")
            return self._close(t, 1007, INVALID)
        setup = field_of(msg, "setup")
        if setup is not None:
            return self._setup(t, setup)
        if self.phase is Phase.AWAITING_SETUP:
            self._log(t, "in", "unknown", 0, ",".join(sorted(msg)))
            self._violate(t, "message_before_setup", f"first message had keys {sorted(msg)}")
            return self._close(t, 1007, INVALID)
        out: list[Action] = []
        if self.phase is not Phase.READY:
            out = self.tick(t)  # setupComplete may be due
            if self.phase is not Phase.READY:
                self._log(t, "in", "unknown", 0, ",".join(sorted(msg)))
                self._violate(t, "message_before_setup_complete", f"keys {sorted(msg)} before setupComplete")
                return out + self._close(t, 1007, INVALID)
        self.msg_index += 1
        rt = field_of(msg, "realtime_input")
        if rt is not None:
            return out + self._realtime(t, rt)
        cc = field_of(msg, "client_content")
        if cc is not None:
            return out + self._client_content(t, cc)
        tr = field_of(msg, "tool_response")
        if tr is not None:
            return out + self._tool_response(t, tr)
        self._log(t, "in", "unknown", 0, ",".join(sorted(msg)))
        return out

    def _setup(self, t: float, setup: Any) -> list[Action]:
        cfg = self.config
        model = str(field_of(setup, "model") or "")
        self._log(t, "in", "setup", 0, model or None)
        if self.phase is not Phase.AWAITING_SETUP:
            self._violate(t, "setup_repeated", "a second setup message on the same connection")
            return []
        if cfg.check_model and not model_known(model):
            # google/adk-python #3964; a close reason holds at most 123 bytes
            name = model if model.startswith("models/") else f"models/{model}"
            reason = f"{name} is not found for API version v1beta, or is not supported for bidiGenerateContent."
            return self._close(t, 1008, reason.encode()[:123].decode(errors="ignore"))
        rtc = field_of(setup, "realtime_input_config") or {}
        aad = field_of(rtc, "automatic_activity_detection") or {}
        self.manual_activity = bool(field_of(aad, "disabled"))
        self.activity_handling = str(field_of(rtc, "activity_handling") or INTERRUPTS)
        self.want_input_tx = field_of(setup, "input_audio_transcription") is not None
        self.want_output_tx = field_of(setup, "output_audio_transcription") is not None
        for tool in field_of(setup, "tools") or []:
            for decl in field_of(tool, "function_declarations") or []:
                if isinstance(decl, dict) and decl.get("name"):
                    self.tools.append(decl)
        sr = field_of(setup, "session_resumption")
        self.resumption = sr is not None
        self.transparent = bool(field_of(sr, "transparent"))
        handle = field_of(sr, "handle")
        if handle:
            rejected = self._resume(t, str(handle))
            if rejected:
                return rejected
        else:
            self.conversation = self.new_conversation()
            self.conversation.t_start = t
            self.conversation.contexts[self.conn] = self.context
        conv = self.conversation
        assert conv is not None
        if conv.t_start is None:
            conv.t_start = t
        conv.compressed = conv.compressed or field_of(setup, "context_window_compression") is not None
        conv.open_conns.add(self.conn)
        conv.closed_t = None
        self._to_phase(Phase.SETTING_UP)
        f = self.faults.get("close-1011")
        if f is not None and f.arg != "mid-turn":
            self._at(t + f.seconds, Close(1011, INTERNAL))
        self._limits(t)
        done_t = t + cfg.setup_s
        if self.resumption and cfg.handle_every_s is not None:
            self._at(done_t + cfg.handle_every_s, _HandleDue(periodic=True))
        payload: dict[str, Any] = {"setupComplete": {}}
        if cfg.session_id:
            token = self.rng["session"].getrandbits(48)
            payload["setupComplete"]["sessionId"] = f"emu-{conv.id}-{self.conn}-{token:012x}"
        if cfg.setup_s > 0:
            self._at(done_t, _Out(payload, "setup_complete"))
            return []
        self._to_phase(Phase.READY)
        self._log(t, "out", "setup_complete")
        return [SendJson(payload)]

    def _resume(self, t: float, handle: str) -> list[Action]:
        """Join the conversation ``handle`` names, or return the close that rejects it."""
        cfg = self.config
        conv = self.conversations.get(handle)
        snap = conv.snapshots.get(handle) if conv is not None else None
        why = None
        if conv is None:
            why = "unknown handle"
        elif conv.ended or (cfg.session_s is not None and not conv.compressed and conv.t_start is not None
                            and t >= conv.t_start + cfg.session_s):
            conv.ended = True
            why = "its session reached the session time limit"
        elif snap is not None and cfg.handle_ttl_s is not None and t - snap.t_mono > cfg.handle_ttl_s:
            why = f"expired ({t - snap.t_mono:.0f} s old, valid {cfg.handle_ttl_s:g} s)"
        if why is not None:
            self._log(t, "in", "resume_rejected", 0, f"{handle}: {why}")
            return self._close(t, 1008, "Invalid session resumption handle.")
        assert conv is not None
        if cfg.reject_resume_while_open and conv.open_conns:
            # aicc2025/sip-to-ai PR #14: "Gemini rejects a resume with 1011 while an earlier socket of the
            # same session is still open"
            self._log(t, "in", "resume_rejected", 0, f"{handle}: connection(s) {sorted(conv.open_conns)} "
                                                     "of the conversation still open")
            return self._close(t, 1011, INTERNAL)
        self.conversation = conv
        if cfg.snapshot_handles and snap is not None:
            self.context = list(snap.context)
            conv.resumed_from[self.conn] = snap.conn
            conv.contexts[self.conn] = self.context
        else:  # live handles: every connection continues the one context
            self.context = conv.contexts.setdefault(min(conv.contexts, default=self.conn), self.context)
            conv.contexts[self.conn] = self.context
            if snap is not None:
                conv.resumed_from[self.conn] = snap.conn
        self._log(t, "in", "resumed", 0, f"handle {handle}: {len(self.context)} user turns in context, "
                                         f"{conv.user_turns} received so far")
        return []

    def _limits(self, t: float) -> None:
        """Schedule goAway and the 1011 close at the connection's age limit or the session's time limit."""
        cfg = self.config
        conv = self.conversation
        assert conv is not None and conv.t_start is not None
        ends = []
        if cfg.connection_s is not None:
            ends.append((t + cfg.connection_s, "connection", cfg.connection_s))
        if cfg.session_s is not None and not conv.compressed:
            ends.append((conv.t_start + cfg.session_s, "session", cfg.session_s))
        if not ends:
            return
        end_t, what, limit = min(ends)
        lead = min(self._uniform(cfg.go_away_lead_s, "session"), limit / 2)
        go_t = max(t, end_t - lead)
        left = end_t - go_t
        self._at(go_t, _Out({"goAway": {"timeLeft": f"{left:.0f}s" if left >= 1 else f"{left:.3f}s"}}, "go_away", 0,
                            f"{left:.3f}s left: {what} time limit {limit:g} s"))
        self._at(end_t, Close(1011, DEADLINE))
        if what == "session":
            self._session_end_t = end_t

    def _realtime(self, t: float, rt: Any) -> list[Action]:
        out: list[Action] = []
        if field_of(rt, "activity_start") is not None:
            out += self._activity_start(t)
        audio = field_of(rt, "audio")
        chunks = field_of(rt, "media_chunks")
        if chunks is not None and self.config.reject_media_chunks:
            # newer models reject the deprecated field (aicc2025/sip-to-ai #5)
            self._violate(t, "media_chunks", "realtimeInput.mediaChunks is deprecated, closing 1007")
            return out + self._close(t, 1007, INVALID)
        if audio is None and chunks:
            audio = chunks[0]
        if audio is not None and not self.closed:
            out += self._audio(t, audio)
        if field_of(rt, "activity_end") is not None and not self.closed:
            out += self._activity_end(t)
        if field_of(rt, "audio_stream_end") is not None and not self.closed:
            out += self._audio_stream_end(t)
        text = field_of(rt, "text")
        if text is not None and not self.closed:
            self._log(t, "in", "text", len(str(text)), str(text)[:80])
            if self.config.answer_text and str(text).strip():
                key = "text:" + hashlib.blake2b(str(text).encode(), digest_size=8).hexdigest()
                self._user_turn(t, None, key, speech=True)
        if not any(field_of(rt, k) is not None for k in REALTIME_FIELDS):
            self._log(t, "in", "unknown", 0, "realtimeInput: " + ",".join(sorted(rt) if isinstance(rt, dict) else ""))
        return out

    def _audio(self, t: float, audio: Any) -> list[Action]:
        data = field_of(audio, "data")
        mime = field_of(audio, "mime_type")
        try:
            pcm = decode_b64(data if isinstance(data, str) else "")
        except (binascii.Error, ValueError):
            self._log(t, "in", "audio", 0, "bad base64")
            return self._close(t, 1007, INVALID)
        self._log(t, "in", "audio", len(pcm), mime)
        if self.manual_activity and self.activity is not Activity.OPEN:
            rule = "audio_after_activity_end" if self.activity is Activity.ENDED else "audio_outside_activity"
            strict = self.config.outside_audio == "strict"
            # BasedHardware/omi #7611: audio before activityStart in manual mode closed 1007
            self._violate(t, rule, f"{len(pcm)} bytes of audio outside an activity window, "
                                   f"{'closing 1007' if strict else 'discarded'}")
            return self._close(t, 1007, INVALID) if strict else []
        if not self.manual_activity and self.audio_since_answer == 0:
            self._new_turn_audio()
        self.audio_in_activity += len(pcm)
        self.audio_since_answer += len(pcm)
        self._turn_hash.update(pcm)
        if "no-response" in self.faults:
            self._turn_peak_db = max(self._turn_peak_db, _level_dbfs(pcm))
        return []

    def _new_turn_audio(self) -> None:
        self._turn_from = self.msg_index
        self._turn_hash = hashlib.blake2b(digest_size=8)
        self._turn_peak_db = -math.inf

    def _activity_start(self, t: float) -> list[Action]:
        self._log(t, "in", "activity_start")
        out: list[Action] = []
        if not self.manual_activity:
            self._violate(t, "activity_signal_with_automatic_vad", "activityStart while automatic detection is on")
        if self.activity is Activity.OPEN:
            self._violate(t, "activity_start_while_open", "activityStart before the previous activityEnd")
        elif self.config.barge_in and self.activity_handling != "NO_INTERRUPTION" and self.busy:
            out += self._interrupt(t)
        self._to_activity(Activity.OPEN)
        self.audio_in_activity = 0
        self._new_turn_audio()
        if "flood" in self.faults:
            self._flood_next = t
        return out + self._maybe_stall(t, "start")

    def _interrupt(self, t: float) -> list[Action]:
        """Barge-in: drop the rest of every answer in progress, cancel its tool call, say interrupted.

        START_OF_ACTIVITY_INTERRUPTS (the default activityHandling, Live API guide): serverContent.interrupted,
        then turnComplete without generationComplete; a pending toolCall gets toolCallCancellation.
        """
        ids = set(self._answers)
        self._queue = [e for e in self._queue if e[2] not in ids]
        heapq.heapify(self._queue)
        out: list[Action] = []
        cancelled = [self.pending_tool[0]] if self.pending_tool is not None and self.tool_sent else []
        self.pending_tool = None  # a call scheduled but not sent just does not happen
        self.tool_sent = False
        if cancelled:
            out.append(self._send_now(t, {"toolCallCancellation": {"ids": cancelled}}, "tool_call_cancellation",
                                      ",".join(cancelled)))
        turns = ", ".join("the greeting" if a.user_turn is None else f"user turn {a.user_turn}"
                          for a in self._answers.values())
        what = f"the answer to {turns}" if turns else "a pending tool call"
        out.append(self._send_now(t, {"serverContent": {"interrupted": True}}, "interrupted",
                                  f"barge-in during {what}"))
        out.append(self._send_now(t, self._turn_complete_payload(), "turn_complete", "interrupted"))
        if self.config.usage_metadata:
            self._log(t, "out", "usage_metadata")
        self._answers.clear()
        self._busy_until = t
        return out

    def _send_now(self, t: float, payload: dict[str, Any], kind: str, detail: str | None = None) -> SendJson:
        self._log(t, "out", kind, 0, detail)
        return SendJson(payload)

    def _activity_end(self, t: float) -> list[Action]:
        self._log(t, "in", "activity_end", 0, f"{self.audio_in_activity} bytes of audio in the activity")
        out = self._maybe_stall(t, "end")
        if not self.manual_activity:
            self._violate(t, "activity_signal_with_automatic_vad", "activityEnd while automatic detection is on")
        if self.activity is not Activity.OPEN:
            self._violate(t, "activity_end_without_start", "activityEnd with no open activity")
            return out
        self._to_activity(Activity.ENDED)
        self._flood_next = None
        if self.audio_in_activity == 0:
            self._violate(t, "empty_activity", "activityEnd with no audio since activityStart")
            self._turn_from = None
            return out
        self._user_turn(t, self.audio_in_activity / USER_BYTES_PER_S, self._turn_hash.hexdigest(),
                        speech=self._turn_peak_db >= self.config.speech_dbfs)
        self.audio_since_answer = 0
        return out

    def _audio_stream_end(self, t: float) -> list[Action]:
        self._log(t, "in", "audio_stream_end")
        if self.manual_activity:
            self._violate(t, "audio_stream_end_in_manual_mode",
                          "audioStreamEnd is only for automatic activity detection")
        elif self.audio_since_answer:
            # we do not emulate the server's VAD; the end of the stream stands in for the end of speech
            self._user_turn(t, self.audio_since_answer / USER_BYTES_PER_S, self._turn_hash.hexdigest(),
                            speech=self._turn_peak_db >= self.config.speech_dbfs)
            self.audio_since_answer = 0
        return []

    def _maybe_stall(self, t: float, signal: str) -> list[Action]:
        f = self.faults.get("stall")
        if f is None or f.trigger != signal:
            return []
        self._take_fault(t, "stall", f"not reading the socket nor sending for {f.seconds:g} s")
        self.stalled_until = t + f.seconds
        return [PauseReading(self.stalled_until)]

    def _client_content(self, t: float, cc: Any) -> list[Action]:
        turns = field_of(cc, "turns") or []
        text = " ".join(
            str(p.get("text", "")) for turn in turns if isinstance(turn, dict)
            for p in (turn.get("parts") or []) if isinstance(p, dict)
        ).strip()
        self._log(t, "in", "client_content", len(text), text[:80] or None)
        if field_of(cc, "turn_complete"):
            if self.config.greet:
                self._speak(self._answer_start(t), user_turn=None)
            else:
                self._log(t, "out", "fault", 0, "greet disabled: clientContent turn left unanswered")
        return []

    def _tool_response(self, t: float, tr: Any) -> list[Action]:
        responses = field_of(tr, "function_responses") or []
        ids = [str(r.get("id")) for r in responses if isinstance(r, dict)]
        self._log(t, "in", "tool_response", 0, ",".join(ids))
        if self.pending_tool is not None and self.pending_tool[0] in ids:
            user_turn = self.pending_tool[1]
            self.pending_tool = None
            self.tool_sent = False
            self._speak(self._answer_start(t), user_turn=user_turn)
        else:
            pending = self.pending_tool[0] if self.pending_tool else None
            self._violate(t, "tool_response_unknown_id", f"ids {ids}, pending call {pending}")
        return []

    # -- answers -------------------------------------------------------------
    def _latency(self, t: float) -> float:
        """Seconds from the end of the user's turn to the first answer message."""
        cfg = self.config
        slow = self.faults.get("slow")
        if slow is not None:
            return slow.seconds
        if cfg.latency_s is not None:
            return cfg.latency_s
        conv = self.conversation
        age = t - (conv.t_start if conv is not None and conv.t_start is not None else t)
        early, late = self._uniform(cfg.latency_early_s, "latency"), self._uniform(cfg.latency_late_s, "latency")
        latency = early + (late - early) * min(1.0, max(0.0, age / cfg.latency_ramp_s))
        if self.rng["latency"].random() < cfg.spike_p:
            latency = self._uniform(cfg.spike_s, "latency")
            self._log(t, "out", "latency_spike", 0, f"{latency:.3f} s")
        return latency

    def _answer_start(self, t: float) -> float:
        """When an answer to something received at ``t`` starts: after any stall, the latency, and (with
        barge-in modelled) after the answer before it: two answers never interleave."""
        if self.stalled_until is not None:
            t = max(t, self.stalled_until)
        start = t + self._latency(t)
        return max(start, self._busy_until) if self.config.barge_in else start

    def _user_turn(self, t: float, user_s: float | None, key: str, speech: bool) -> None:
        """A user turn reached the model's context at ``t``: record it, then answer it (or not, by fault)."""
        conv = self.conversation
        assert conv is not None
        cfg = self.config
        conv.user_turns += 1
        n = conv.user_turns
        if cfg.flag_turns and key in self.context:
            self._violate(t, "duplicate_turn", f"user turn {n} (audio {key}) is already in the context as turn "
                                               f"{self.context.index(key) + 1} of {len(self.context)}")
        self.context.append(key)
        conv.received.setdefault(key, UserTurn(key, n, self.conn, t))
        self._turn_from = None
        nr = self.faults.get("no-response")
        mode = nr.mode if nr is not None and nr.turn in (None, n) else None
        if mode == "noise" and speech:
            mode = None
        tx_text = None if user_s is None else f"[user audio {user_s:.1f} s]"
        tx = tx_text is not None and (self.want_input_tx or not cfg.transcripts_on_request)
        if mode == "silent" or mode == "noise":
            what = "no speech in the activity, not answering" if mode == "noise" else "ignoring"
            self._log(t, "out", "fault", 0, f"no-response:{mode}: {what} user turn {n}")
            return
        start = self._answer_start(t)
        tx_t = start if cfg.input_tx_s is None else min(start, t + cfg.input_tx_s)
        tx_out = _Out({"serverContent": {"inputTranscription": {"text": tx_text}}}, "input_transcription",
                      len(tx_text or ""), tx_text)
        if tx:
            self._at(tx_t, tx_out)
        if mode == "heard":
            self._log(t, "out", "fault", 0, f"no-response:heard: user turn {n} transcribed, never answered")
            return
        if mode == "empty":
            # python-genai #2117: a turnComplete with no content
            self._log(t, "out", "fault", 0, f"no-response:empty: an empty turnComplete for user turn {n}")
            answer = self._new_answer(n, start)
            self._at(start, _Out(self._turn_complete_payload(), "turn_complete", 0, "empty"), answer.id)
            return
        if mode == "late":
            # google-gemini/gemini-live-api-examples #48: transcript, ~55 s, the transcript again, then the answer
            self._log(t, "out", "fault", 0, f"no-response:late: user turn {n} answered {cfg.late_gap_s:g} s late")
            again = tx_t + cfg.late_gap_s
            answer = self._speak(max(start, again + self._latency(again)), user_turn=n)
            if tx:
                self._at(again, tx_out, answer.id)
            return
        if n in cfg.tool_call_turns:
            if self.tools:
                decl = self.tools[(n - 1) % len(self.tools)]
                call_id = f"call-{conv.id}-{n}"
                self.pending_tool = (call_id, n)
                answer = self._new_answer(n, start)
                call = {"id": call_id, "name": decl["name"], "args": _dummy_args(decl)}
                self._at(start, _Out({"toolCall": {"functionCalls": [call]}}, "tool_call", 0,
                                     f"{decl['name']} id={call_id}"), answer.id)
                return
            self._log(t, "out", "fault", 0, f"tool call for user turn {n} skipped: setup declared no tool")
        self._speak(start, user_turn=n)

    def _new_answer(self, user_turn: int | None, end_t: float) -> _Answer:
        answer = _Answer(next(self._answer_ids), user_turn, end_t)
        self._answers[answer.id] = answer
        self._busy_until = max(self._busy_until, end_t)
        return answer

    def _turn_complete_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"serverContent": {"turnComplete": True}}
        if self.config.usage_metadata:
            prompt = len(self.context) * 3 * AUDIO_TOKENS_PER_S  # ~3 s of audio per turn in the context
            reply = int(self.config.reply_s * AUDIO_TOKENS_PER_S)
            payload["usageMetadata"] = {
                "promptTokenCount": prompt, "responseTokenCount": reply, "totalTokenCount": prompt + reply,
                "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": prompt}],
                "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": reply}],
            }
        return payload

    def _chunks(self, audio: np.ndarray) -> list[tuple[int, int]]:
        """(start sample, end sample) of each model audio chunk."""
        out = []
        pos = 0
        while pos < audio.size:
            step = max(1, int(MODEL_RATE * self._uniform(self.config.chunk_ms, "chunks") / 1000))
            out.append((pos, min(audio.size, pos + step)))
            pos += step
        return out

    def _speak(self, start: float, user_turn: int | None) -> _Answer:
        """Schedule one spoken model turn: audio chunks in bursts, transcript pieces, then the turn's end."""
        conv = self.conversation
        assert conv is not None
        cfg = self.config
        conv.answers += 1
        n = conv.answers
        audio = speech_like(cfg.reply_s, seed=n)
        chunks = self._chunks(audio)
        times: list[float] = []
        i = 0
        while i < len(chunks):  # a burst starts when the audio sent so far, paced, says so
            size = self.rng["chunks"].randint(*cfg.burst_chunks)
            t0 = start + chunks[i][0] / MODEL_RATE / cfg.pace
            times += [t0 + j * BURST_GAP_S for j in range(min(size, len(chunks) - i))]
            i += size
        if cfg.burst_chunks == (1, 1):
            gen_t = start + len(chunks) * (chunks[0][1] - chunks[0][0]) / MODEL_RATE / cfg.pace
        else:
            gen_t = times[-1] + BURST_GAP_S
        playback_end = times[0] + cfg.reply_s
        end_t = max(gen_t, playback_end + self.rng["chunks"].uniform(0.05, 0.3)) if cfg.turn_complete_after_playback \
            else gen_t
        answer = self._new_answer(user_turn, end_t)
        phrases = ["Hello, welcome to the interview."] if user_turn is None else [
            cfg.phrases[(n + i) % len(cfg.phrases)] for i in range(2)]
        words = " ".join(phrases).split()
        word_at = {i * len(chunks) // len(words): w for i, w in enumerate(words)}
        out_tx = self.want_output_tx or not cfg.transcripts_on_request
        mid = self.faults.get("close-1011")
        close_mid = mid is not None and mid.arg == "mid-turn" and user_turn is not None
        for i, ((a, b), t) in enumerate(zip(chunks, times, strict=True)):
            chunk = audio[a:b].astype("<i2").tobytes()
            data = base64.b64encode(chunk).decode()
            part = {"inlineData": {"mimeType": f"audio/pcm;rate={MODEL_RATE}", "data": data}}
            self._at(t, _Out({"serverContent": {"modelTurn": {"parts": [part]}}}, "model_audio", len(chunk)),
                     answer.id)
            if i in word_at and out_tx:
                piece = word_at[i] + " "
                self._at(t, _Out({"serverContent": {"outputTranscription": {"text": piece}}},
                                 "output_transcription", len(piece), piece), answer.id)
            if close_mid and i == min(3, len(chunks) - 1):
                self._take_fault(start, "close-1011", "closing in the middle of the answer")
                self._at(t, Close(1011, INTERNAL))
        self._at(gen_t, _Out({"serverContent": {"generationComplete": True}}, "generation_complete"), answer.id)
        self._at(end_t, _Out(self._turn_complete_payload(), "turn_complete"), answer.id)
        if self.resumption and cfg.handle_every_s is None:
            self._at(end_t, _HandleDue(periodic=False), answer.id)
        if user_turn is not None and "go-away" in self.faults:
            left = self.faults["go-away"].seconds
            self._take_fault(start, "go-away", f"goAway after the answer, closing {left:g} s later")
            self._at(end_t + 0.05, _Out({"goAway": {"timeLeft": f"{left:g}s"}}, "go_away", 0, f"{left:g}s"))
            self._at(end_t + 0.05 + left, Close(1000, "Session time limit reached."))
        return answer

    def _handle_update(self, t: float, periodic: bool) -> tuple[dict[str, Any], str]:
        """A sessionResumptionUpdate for this moment: a new handle (a snapshot of the context), or not resumable."""
        conv = self.conversation
        assert conv is not None
        if self.busy and periodic:
            return {"sessionResumptionUpdate": {"resumable": False}}, "resumable=false"
        conv.handles += 1
        handle = f"conv{conv.id}-h{conv.handles}"
        consumed = self._turn_from - 1 if self._turn_from is not None else self.msg_index
        conv.snapshots[handle] = Snapshot(handle, self.conn, t, tuple(self.context), consumed)
        self.conversations[handle] = conv
        update: dict[str, Any] = {"newHandle": handle, "resumable": True}
        if self.transparent and consumed >= 0:
            update["lastConsumedClientMessageIndex"] = consumed
        return {"sessionResumptionUpdate": update}, handle

    # -- time ----------------------------------------------------------------
    def tick(self, t: float) -> list[Action]:
        """Everything due by ``t``, in order; nothing while stalled."""
        out: list[Action] = []
        if self.closed or (self.stalled_until is not None and t < self.stalled_until):
            return out
        if self._flood_next is not None:
            rate = self.faults["flood"].seconds if "flood" in self.faults else 50.0
            self._flood_next = max(self._flood_next, t - 0.5)  # after a stall or a late tick, do not burst
            while self._flood_next <= t:
                out.append(SendJson({"serverContent": {"inputTranscription": {"text": "."}}}))
                self._log(t, "out", "input_transcription", 1, "flood")
                self._flood_next += 1.0 / rate
        while self._queue and self._queue[0][0] <= t:
            due, _, aid, item = heapq.heappop(self._queue)
            if isinstance(item, Close):
                if item.reason == DEADLINE and self._session_end_t == due:
                    assert self.conversation is not None
                    self.conversation.ended = True
                return out + self._close(t, item.code, item.reason)
            if isinstance(item, SendPong):  # ``at_t``: when it actually goes out, the tick's time
                self._log(t, "out", "pong", len(item.data), f"delay {t - item.ping_t:.3f} s")
                out.append(dataclasses.replace(item, at_t=t))
                continue
            if isinstance(item, _HandleDue):
                payload, detail = self._handle_update(t, item.periodic)
                self._log(t, "out", "session_resumption_update", 0, detail)
                out.append(SendJson(payload))
                if item.periodic and self.config.handle_every_s is not None:
                    self._at(due + self.config.handle_every_s * self.rng["handles"].uniform(0.9, 1.1), _HandleDue(True))
                continue
            self._log(t, "out", item.kind, item.n_bytes, item.detail)
            out.append(SendJson(item.payload))
            if item.kind == "setup_complete":
                self._to_phase(Phase.READY)
            answer = self._answers.get(aid)
            if answer is not None and item.kind == "tool_call":
                self.tool_sent = True
                self._answers.pop(aid)  # the model waits for the tool now: the tool call keeps it busy
            elif item.kind == "turn_complete":
                if self.config.usage_metadata:
                    self._log(t, "out", "usage_metadata")
                self._answers.pop(aid, None)
        return out

    def next_due(self) -> float | None:
        """When ``tick`` next has something to do (None: only when a message arrives)."""
        due = [self._queue[0][0]] if self._queue else []
        if self._flood_next is not None:
            due.append(self._flood_next)
        if self.stalled_until is not None:
            due = [max(d, self.stalled_until) for d in due]
        return min(due) if due else None
