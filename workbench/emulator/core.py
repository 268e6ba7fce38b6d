"""One Live API connection's session state, with no I/O (like websockets' protocol.py).

The server shell feeds ``receive(t, message)`` for each client JSON message and ``tick(t)``
from a timer; both return actions (send this JSON, close with this code, stop reading until).
Times are ``time.monotonic()`` seconds, so the core is tested with plain calls and exact times.

Wire format (Developer API, BidiGenerateContent): the client's first message is ``setup``;
then ``realtimeInput`` (audio / activityStart / activityEnd / audioStreamEnd / text),
``clientContent`` and ``toolResponse``.  Field names arrive in snake_case or camelCase and
audio in urlsafe or standard base64; both are accepted.  Server messages are camelCase, as
google-genai's ``_LiveServerMessage_from_mldev`` expects them.

Numbering: user turns (activities with audio, or audioStreamEnd after audio with automatic
detection) are counted 1, 2, ... over the whole conversation, across resumed connections;
``tool_call_turns`` and the ``no-response`` fault refer to that number.  The greeting is not a user turn.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .faults import Fault

MODEL_RATE = 24_000
USER_BYTES_PER_S = 16_000 * 2  # 16 kHz 16-bit mono, what the Live API expects from the client
INVALID = "Request contains an invalid argument."
REALTIME_FIELDS = ("activity_start", "audio", "media_chunks", "activity_end", "audio_stream_end", "text")


@dataclass(frozen=True)
class SendJson:
    payload: dict[str, Any]


@dataclass(frozen=True)
class Close:
    code: int
    reason: str


@dataclass(frozen=True)
class PauseReading:
    """Stop reading the socket (and so stop answering pings) until ``until_t``."""

    until_t: float


Action = SendJson | Close | PauseReading


@dataclass(frozen=True)
class LogEntry:
    """One thing the emulator received ("in") or sent ("out"), at ``time.monotonic()`` ``t_mono``.

    Besides the message kinds, "in" has ``violation``, ``resumed``, ``resume_rejected``, ``text``
    and ``client_closed``; "out" has ``fault`` (a fault fired) and ``close``.
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


@dataclass
class EmulatorConfig:
    """Scripted behaviour of the emulated model; ``faults`` inject failures (see ``faults.py``)."""

    reply_s: float = 1.0  # length of each spoken answer
    latency_s: float = 0.15  # ActivityEnd -> first answer message
    chunk_ms: int = 40  # model audio chunk length
    pace: float = 2.0  # how much faster than real time the model audio is sent
    greet: bool = True  # answer a clientContent turn (turnComplete) with a spoken greeting
    outside_audio: str = "discard"  # audio outside an activity: "discard" (logged) or "strict" (close 1007)
    tool_call_turns: tuple[int, ...] = ()  # user turns (1-based) answered first with a toolCall
    reject_resume_while_open: bool = False  # close 1011 a resume whose conversation still has an open connection
    faults: list[Fault] = field(default_factory=list)
    phrases: tuple[str, ...] = (
        "Thank you.", "That is interesting.", "Could you tell me more?", "Great.", "Next question.",
        "What was the hardest part?", "How did you solve it?",
    )

    def __post_init__(self) -> None:
        if self.outside_audio not in ("discard", "strict"):
            raise ValueError(f"outside_audio must be 'discard' or 'strict', not {self.outside_audio!r}")
        if self.reply_s <= 0 or self.chunk_ms <= 0 or self.pace <= 0 or self.latency_s < 0:
            raise ValueError("reply_s, chunk_ms and pace must be > 0 and latency_s >= 0")
        self.tool_call_turns = tuple(self.tool_call_turns)


@dataclass
class Conversation:
    """What survives a reconnect with a resumption handle: the turns so far."""

    id: int
    user_turns: int = 0
    answers: int = 0
    handles: int = 0
    open_conns: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class _Out:
    """A scheduled message and how to log it when it goes out."""

    payload: dict[str, Any]
    kind: str
    n_bytes: int = 0
    detail: str | None = None


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


def _dummy_args(decl: dict[str, Any]) -> dict[str, Any]:
    """Plausible values for a declaration's required parameters, so a tool handler has something to read."""
    schema = field_of(decl, "parameters") or field_of(decl, "parameters_json_schema") or {}
    props = field_of(schema, "properties") or {}
    values = {"string": "example", "integer": 1, "number": 1.0, "boolean": True, "array": [], "object": {}}
    return {name: values.get(str(field_of(props.get(name), "type") or "string").lower(), "example")
            for name in field_of(schema, "required") or [] if isinstance(name, str)}


class SessionCore:
    """State of one connection: setup, activity windows, scripted answers, faults, violations."""

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
        self.log: list[LogEntry] = []
        self.violations: list[Violation] = []
        self.setup_done = False
        self.manual_activity = False
        self.resumption = False
        self.conversation: Conversation | None = None
        self.tools: list[dict[str, Any]] = []
        self.activity_open = False
        self.activity_ended = False  # activityEnd seen, no activityStart since
        self.audio_in_activity = 0  # bytes since activityStart
        self.audio_since_answer = 0  # bytes, automatic detection only
        self.pending_tool: tuple[str, int] | None = None  # (call id, user turn it answers)
        self.stalled_until: float | None = None
        self.closed = False
        self._queue: list[tuple[float, int, _Out | Close]] = []
        self._seq = itertools.count()
        self._flood_next: float | None = None

    # -- helpers -------------------------------------------------------------
    def _log(self, t: float, direction: str, kind: str, n_bytes: int = 0, detail: str | None = None) -> None:
        self.log.append(LogEntry(t, self.conn, direction, kind, n_bytes, detail))

    def _violate(self, t: float, rule: str, detail: str) -> None:
        self.violations.append(Violation(t, self.conn, rule, detail))
        self._log(t, "in", "violation", 0, f"{rule}: {detail}")

    def _at(self, t: float, item: _Out | Close) -> None:
        heapq.heappush(self._queue, (t, next(self._seq), item))

    def _take_fault(self, t: float, name: str, what: str) -> Fault | None:
        """Use up a one-shot fault, logging that it fired."""
        f = self.faults.pop(name, None)
        if f is not None:
            self._log(t, "out", "fault", 0, f"{name}: {what}")
        return f

    def connection_lost(self, t: float, detail: str) -> None:
        """The socket is gone without our Close (the client closed it, or the network did)."""
        if not self.closed:
            self._log(t, "in", "client_closed", 0, detail)
        self._mark_closed()

    def _mark_closed(self) -> None:
        self.closed = True
        if self.conversation is not None:
            self.conversation.open_conns.discard(self.conn)

    def _close(self, t: float, code: int, reason: str) -> list[Action]:
        self._mark_closed()
        self._queue.clear()
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

    def _receive(self, t: float, msg: Any) -> list[Action]:
        if not isinstance(msg, dict) or not msg:
            self._log(t, "in", "unknown", 0, "not a JSON object")
            return self._close(t, 1007, INVALID)
        setup = field_of(msg, "setup")
        if setup is not None:
            return self._setup(t, setup)
        if not self.setup_done:
            self._log(t, "in", "unknown", 0, ",".join(sorted(msg)))
            self._violate(t, "message_before_setup", f"first message had keys {sorted(msg)}")
            return self._close(t, 1007, INVALID)
        rt = field_of(msg, "realtime_input")
        if rt is not None:
            return self._realtime(t, rt)
        cc = field_of(msg, "client_content")
        if cc is not None:
            return self._client_content(t, cc)
        tr = field_of(msg, "tool_response")
        if tr is not None:
            return self._tool_response(t, tr)
        self._log(t, "in", "unknown", 0, ",".join(sorted(msg)))
        return []

    def _setup(self, t: float, setup: Any) -> list[Action]:
        model = str(field_of(setup, "model") or "")
        self._log(t, "in", "setup", 0, model or None)
        if self.setup_done:
            self._violate(t, "setup_repeated", "a second setup message on the same connection")
            return []
        rtc = field_of(setup, "realtime_input_config") or {}
        aad = field_of(rtc, "automatic_activity_detection") or {}
        self.manual_activity = bool(field_of(aad, "disabled"))
        for tool in field_of(setup, "tools") or []:
            for decl in field_of(tool, "function_declarations") or []:
                if isinstance(decl, dict) and decl.get("name"):
                    self.tools.append(decl)
        sr = field_of(setup, "session_resumption")
        self.resumption = sr is not None
        handle = field_of(sr, "handle")
        if handle:
            conv = self.conversations.get(handle)
            if conv is None:
                self._log(t, "in", "resume_rejected", 0, str(handle))
                return self._close(t, 1008, "Invalid session resumption handle.")
            if self.config.reject_resume_while_open and conv.open_conns:
                self._log(t, "in", "resume_rejected", 0, f"{handle}: connection(s) {sorted(conv.open_conns)} "
                                                         "of the conversation still open")
                return self._close(t, 1011, "Internal error encountered.")
            self.conversation = conv
            self._log(t, "in", "resumed", 0, f"handle {handle}: {conv.user_turns} user turns so far")
        else:
            self.conversation = self.new_conversation()
        self.conversation.open_conns.add(self.conn)
        self.setup_done = True
        self._log(t, "out", "setup_complete")
        f = self.faults.get("close-1011")
        if f is not None and f.arg != "mid-turn":
            self._at(t + f.seconds, Close(1011, "Internal error encountered."))
        return [SendJson({"setupComplete": {}})]

    def _realtime(self, t: float, rt: Any) -> list[Action]:
        out: list[Action] = []
        if field_of(rt, "activity_start") is not None:
            out += self._activity_start(t)
        audio = field_of(rt, "audio")
        chunks = field_of(rt, "media_chunks")
        if audio is None and chunks:
            audio = chunks[0]
        if audio is not None:
            out += self._audio(t, audio)
        if field_of(rt, "activity_end") is not None and not self.closed:
            out += self._activity_end(t)
        if field_of(rt, "audio_stream_end") is not None and not self.closed:
            out += self._audio_stream_end(t)
        text = field_of(rt, "text")
        if text is not None:
            self._log(t, "in", "text", len(str(text)), str(text)[:80])
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
        if self.manual_activity and not self.activity_open:
            rule = "audio_after_activity_end" if self.activity_ended else "audio_outside_activity"
            action = "closing 1007" if self.config.outside_audio == "strict" else "discarded"
            self._violate(t, rule, f"{len(pcm)} bytes of audio outside an activity window, {action}")
            if self.config.outside_audio == "strict":
                return self._close(t, 1007, INVALID)
            return []
        self.audio_in_activity += len(pcm)
        self.audio_since_answer += len(pcm)
        return []

    def _activity_start(self, t: float) -> list[Action]:
        self._log(t, "in", "activity_start")
        if not self.manual_activity:
            self._violate(t, "activity_signal_with_automatic_vad", "activityStart while automatic detection is on")
        if self.activity_open:
            self._violate(t, "activity_start_while_open", "activityStart before the previous activityEnd")
        self.activity_open = True
        self.activity_ended = False
        self.audio_in_activity = 0
        if "flood" in self.faults:
            self._flood_next = t
        return self._maybe_stall(t, "start")

    def _activity_end(self, t: float) -> list[Action]:
        self._log(t, "in", "activity_end", 0, f"{self.audio_in_activity} bytes of audio in the activity")
        out = self._maybe_stall(t, "end")
        if not self.manual_activity:
            self._violate(t, "activity_signal_with_automatic_vad", "activityEnd while automatic detection is on")
        if not self.activity_open:
            self._violate(t, "activity_end_without_start", "activityEnd with no open activity")
            return out
        self.activity_open = False
        self.activity_ended = True
        self._flood_next = None
        if self.audio_in_activity == 0:
            self._violate(t, "empty_activity", "activityEnd with no audio since activityStart")
            return out
        self._user_turn(t, self.audio_in_activity / USER_BYTES_PER_S)
        self.audio_since_answer = 0
        return out

    def _audio_stream_end(self, t: float) -> list[Action]:
        self._log(t, "in", "audio_stream_end")
        if self.manual_activity:
            self._violate(t, "audio_stream_end_in_manual_mode",
                          "audioStreamEnd is only for automatic activity detection")
        elif self.audio_since_answer:
            # we do not emulate the server's VAD; the end of the stream stands in for the end of speech
            self._user_turn(t, self.audio_since_answer / USER_BYTES_PER_S)
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
            self._speak(self._answer_start(t), user_turn=user_turn)
        else:
            pending = self.pending_tool[0] if self.pending_tool else None
            self._violate(t, "tool_response_unknown_id", f"ids {ids}, pending call {pending}")
        return []

    # -- answers -------------------------------------------------------------
    def _answer_start(self, t: float) -> float:
        """When an answer to something received at ``t`` starts: after any stall, then the latency."""
        if self.stalled_until is not None:
            t = max(t, self.stalled_until)
        slow = self.faults.get("slow")
        return t + (slow.seconds if slow is not None else self.config.latency_s)

    def _user_turn(self, t: float, user_s: float) -> None:
        assert self.conversation is not None
        self.conversation.user_turns += 1
        n = self.conversation.user_turns
        nr = self.faults.get("no-response")
        if nr is not None and nr.turn in (None, n):
            self._log(t, "out", "fault", 0, f"no-response: ignoring the end of user turn {n}")
            return
        start = self._answer_start(t)
        text = f"[user audio {user_s:.1f} s]"
        self._at(start, _Out({"serverContent": {"inputTranscription": {"text": text}}},
                             "input_transcription", len(text), text))
        if n in self.config.tool_call_turns:
            if self.tools:
                decl = self.tools[(n - 1) % len(self.tools)]
                call_id = f"call-{self.conversation.id}-{n}"
                self.pending_tool = (call_id, n)
                call = {"id": call_id, "name": decl["name"], "args": _dummy_args(decl)}
                self._at(start, _Out({"toolCall": {"functionCalls": [call]}}, "tool_call", 0,
                                     f"{decl['name']} id={call_id}"))
                return
            self._log(t, "out", "fault", 0, f"tool call for user turn {n} skipped: setup declared no tool")
        self._speak(start, user_turn=n)

    def _speak(self, start: float, user_turn: int | None) -> None:
        """Schedule one spoken model turn: paced audio chunks, transcript pieces, then the turn's end."""
        assert self.conversation is not None
        cfg = self.config
        self.conversation.answers += 1
        n = self.conversation.answers
        audio = speech_like(cfg.reply_s, seed=n)
        step = int(MODEL_RATE * cfg.chunk_ms / 1000)
        dt = cfg.chunk_ms / 1000 / cfg.pace
        phrases = ["Hello, welcome to the interview."] if user_turn is None else [
            cfg.phrases[(n + i) % len(cfg.phrases)] for i in range(2)]
        words = " ".join(phrases).split()
        n_chunks = -(-audio.size // step)
        word_at = {i * n_chunks // len(words): w for i, w in enumerate(words)}
        mid = self.faults.get("close-1011")
        close_mid = mid is not None and mid.arg == "mid-turn" and user_turn is not None
        for i in range(n_chunks):
            t = start + i * dt
            chunk = audio[i * step:(i + 1) * step].astype("<i2").tobytes()
            data = base64.b64encode(chunk).decode()
            part = {"inlineData": {"mimeType": f"audio/pcm;rate={MODEL_RATE}", "data": data}}
            self._at(t, _Out({"serverContent": {"modelTurn": {"parts": [part]}}}, "model_audio", len(chunk)))
            if i in word_at:
                piece = word_at[i] + " "
                self._at(t, _Out({"serverContent": {"outputTranscription": {"text": piece}}},
                                 "output_transcription", len(piece), piece))
            if close_mid and i == min(3, n_chunks - 1):
                self._take_fault(start, "close-1011", "closing in the middle of the answer")
                self._at(t, Close(1011, "Internal error encountered."))
        t = start + n_chunks * dt
        self._at(t, _Out({"serverContent": {"generationComplete": True}}, "generation_complete"))
        self._at(t, _Out({"serverContent": {"turnComplete": True}}, "turn_complete"))
        if self.resumption:
            self.conversation.handles += 1
            handle = f"conv{self.conversation.id}-h{self.conversation.handles}"
            self.conversations[handle] = self.conversation
            self._at(t, _Out({"sessionResumptionUpdate": {"newHandle": handle, "resumable": True}},
                             "session_resumption_update", 0, handle))
        if user_turn is not None and "go-away" in self.faults:
            left = self.faults["go-away"].seconds
            self._take_fault(start, "go-away", f"goAway after the answer, closing {left:g} s later")
            self._at(t + 0.05, _Out({"goAway": {"timeLeft": f"{left:g}s"}}, "go_away", 0, f"{left:g}s"))
            self._at(t + 0.05 + left, Close(1000, "Session time limit reached."))

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
            _, _, item = heapq.heappop(self._queue)
            if isinstance(item, Close):
                return out + self._close(t, item.code, item.reason)
            self._log(t, "out", item.kind, item.n_bytes, item.detail)
            out.append(SendJson(item.payload))
        return out

    def next_due(self) -> float | None:
        """When ``tick`` next has something to do (None: only when a message arrives)."""
        due = [self._queue[0][0]] if self._queue else []
        if self._flood_next is not None:
            due.append(self._flood_next)
        if self.stalled_until is not None:
            due = [max(d, self.stalled_until) for d in due]
        return min(due) if due else None
