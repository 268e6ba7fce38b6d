"""One Live API connection's session state, with no I/O (like websockets' protocol.py).

The server shell feeds ``receive(t, message)`` for each client JSON message and ``tick(t)``
from a timer; both return actions (send this JSON, close with this code, stop reading).
Times are ``time.monotonic()`` seconds, so the core is tested with plain calls and exact times.

Wire format (Developer API, BidiGenerateContent): the client's first message is ``setup``;
then ``realtimeInput`` (audio / activityStart / activityEnd / audioStreamEnd / text),
``clientContent`` and ``toolResponse``.  Field names arrive in snake_case or camelCase and
audio in urlsafe or standard base64; both are accepted.  Server messages are camelCase.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import itertools
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .faults import Fault

MODEL_RATE = 24_000


@dataclass(frozen=True)
class SendJson:
    payload: dict[str, Any]


@dataclass(frozen=True)
class Close:
    code: int
    reason: str


@dataclass(frozen=True)
class PauseReading:
    """Stop reading the socket (and so stop answering pings) for ``seconds``."""

    seconds: float


Action = SendJson | Close | PauseReading


@dataclass(frozen=True)
class LogEntry:
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
    outside_audio: str = "discard"  # audio outside an activity: "discard" (logged) or "strict" (close 1007)
    tool_call_turns: tuple[int, ...] = ()  # answers (1-based) that start with a toolCall
    faults: list[Fault] = field(default_factory=list)
    words: tuple[str, ...] = (
        "Thank you.", "That is interesting.", "Could you tell me more?", "Great.", "Next question:",
        "What was the hardest part?", "How did you solve it?",
    )

    def __post_init__(self) -> None:
        if self.outside_audio not in ("discard", "strict"):
            raise ValueError(f"outside_audio must be 'discard' or 'strict', not {self.outside_audio!r}")
        if self.reply_s <= 0 or self.chunk_ms <= 0 or self.pace <= 0 or self.latency_s < 0:
            raise ValueError("reply_s, chunk_ms and pace must be > 0 and latency_s >= 0")


@dataclass
class Conversation:
    """What survives a reconnect with a resumption handle: the turns so far."""

    id: int
    answers: int = 0
    handles: int = 0


def _get(d: dict[str, Any], *names: str) -> Any:
    for n in names:
        if n in d:
            return d[n]
    return None


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


def field_of(d: Any, snake: str) -> Any:
    """A proto-JSON field by its snake_case name, accepting camelCase too."""
    if not isinstance(d, dict):
        return None
    return _get(d, snake, _camel(snake))


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


class SessionCore:
    """State of one connection: setup, activity windows, scripted answers, faults, violations."""

    def __init__(
        self,
        config: EmulatorConfig,
        conn: int,
        conversations: dict[str, Conversation],
        new_conversation: Any,
        fault: Fault | None = None,
    ) -> None:
        self.config = config
        self.conn = conn
        self.conversations = conversations
        self.new_conversation = new_conversation
        self.fault = fault
        self.log: list[LogEntry] = []
        self.violations: list[Violation] = []
        self.setup_done = False
        self.manual_activity = False
        self.resumption = False
        self.conversation: Conversation | None = None
        self.tools: list[str] = []
        self.activity_open = False
        self.audio_in_activity = 0  # bytes since activityStart
        self.activity_ended = False  # activityEnd seen, no activityStart since
        self.pending_tool: str | None = None
        self.activities = 0  # user activities with audio on this connection
        self.t_setup = 0.0
        self.closed = False
        self._queue: list[tuple[float, int, Action]] = []
        self._seq = itertools.count()
        self._flood_next: float | None = None

    # -- helpers -------------------------------------------------------------
    def _log(self, t: float, direction: str, kind: str, n_bytes: int = 0, detail: str | None = None) -> None:
        self.log.append(LogEntry(t, self.conn, direction, kind, n_bytes, detail))

    def _violate(self, t: float, rule: str, detail: str) -> None:
        self.violations.append(Violation(t, self.conn, rule, detail))
        self._log(t, "in", "violation", 0, f"{rule}: {detail}")

    def _at(self, t: float, action: Action) -> None:
        heapq.heappush(self._queue, (t, next(self._seq), action))

    def _fault(self, name: str) -> Fault | None:
        return self.fault if self.fault is not None and self.fault.name == name else None

    # -- input ---------------------------------------------------------------
    def receive(self, t: float, msg: Any) -> list[Action]:
        """One client message (parsed JSON)."""
        if self.closed:
            return []
        if not isinstance(msg, dict) or not msg:
            self._log(t, "in", "unknown", 0, "not a JSON object")
            return self._close(t, 1007, "Request contains an invalid argument.")
        setup = field_of(msg, "setup")
        if setup is not None:
            return self._setup(t, setup)
        if not self.setup_done:
            self._violate(t, "message_before_setup", f"first message had keys {sorted(msg)}")
            return self._close(t, 1007, "Request contains an invalid argument.")
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

    def _setup(self, t: float, setup: dict[str, Any]) -> list[Action]:
        self._log(t, "in", "setup", 0, str(setup.get("model", "")))
        rtc = field_of(setup, "realtime_input_config") or {}
        aad = field_of(rtc, "automatic_activity_detection") or {}
        self.manual_activity = bool(field_of(aad, "disabled"))
        for tool in setup.get("tools") or []:
            for decl in field_of(tool, "function_declarations") or []:
                if isinstance(decl, dict) and decl.get("name"):
                    self.tools.append(decl["name"])
        sr = field_of(setup, "session_resumption")
        self.resumption = sr is not None
        handle = field_of(sr, "handle") if isinstance(sr, dict) else None
        if handle:
            conv = self.conversations.get(handle)
            if conv is None:
                self._log(t, "in", "resume_rejected", 0, handle)
                return self._close(t, 1008, "Invalid session resumption handle.")
            self.conversation = conv
            self._log(t, "in", "resumed", 0, f"handle {handle}, {conv.answers} answers so far")
        else:
            self.conversation = self.new_conversation()
        self.setup_done = True
        self.t_setup = t
        self._log(t, "out", "setup_complete")
        out: list[Action] = [SendJson({"setupComplete": {}})]
        f = self._fault("close-1011")
        if f is not None and f.arg != "mid-turn":
            self._at(t + float(f.arg or 5.0), Close(1011, "Internal error encountered."))
        return out

    def _realtime(self, t: float, rt: dict[str, Any]) -> list[Action]:
        out: list[Action] = []
        audio = field_of(rt, "audio")
        chunks = field_of(rt, "media_chunks")
        if audio is None and chunks:
            audio = chunks[0]
        if audio is not None:
            out += self._audio(t, audio)
        if field_of(rt, "activity_start") is not None:
            out += self._activity_start(t)
        if field_of(rt, "activity_end") is not None:
            out += self._activity_end(t)
        if field_of(rt, "audio_stream_end") is not None:
            self._log(t, "in", "audio_stream_end")
            if self.manual_activity:
                self._violate(t, "audio_stream_end_in_manual_mode",
                              "audioStreamEnd is only for automatic activity detection")
        text = field_of(rt, "text")
        if text is not None:
            self._log(t, "in", "text", len(str(text)))
        return out

    def _audio(self, t: float, audio: dict[str, Any]) -> list[Action]:
        data = field_of(audio, "data") or ""
        try:
            pcm = decode_b64(data)
        except (binascii.Error, ValueError):
            self._log(t, "in", "audio", 0, "bad base64")
            return self._close(t, 1007, "Request contains an invalid argument.")
        mime = field_of(audio, "mime_type") or ""
        rate = re.search(r"rate=(\d+)", mime)
        self._log(t, "in", "audio", len(pcm), mime or None)
        if rate is None or rate.group(1) != "16000":
            self._log(t, "in", "note", 0, f"audio mimeType {mime!r} (16 kHz expected)")
        if self.manual_activity and not self.activity_open:
            rule = "audio_after_activity_end" if self.activity_ended else "audio_outside_activity"
            self._violate(t, rule, f"{len(pcm)} bytes of audio outside an activity window")
            if self.config.outside_audio == "strict":
                return self._close(t, 1007, "Request contains an invalid argument.")
            return []
        self.audio_in_activity += len(pcm)
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
        if self._fault("flood") is not None:
            self._flood_next = t
        return []

    def _activity_end(self, t: float) -> list[Action]:
        self._log(t, "in", "activity_end", 0, f"{self.audio_in_activity} bytes of audio in the activity")
        if not self.manual_activity:
            self._violate(t, "activity_signal_with_automatic_vad", "activityEnd while automatic detection is on")
        if not self.activity_open:
            self._violate(t, "activity_end_without_start", "activityEnd with no open activity")
            return []
        self.activity_open = False
        self.activity_ended = True
        self._flood_next = None
        if self.audio_in_activity == 0:
            self._violate(t, "empty_activity", "activityEnd with no audio since activityStart")
            return []
        self.activities += 1
        return self._answer(t, user_s=self.audio_in_activity / 32000)

    def _client_content(self, t: float, cc: dict[str, Any]) -> list[Action]:
        turns = field_of(cc, "turns") or []
        text = " ".join(
            str(p.get("text", "")) for turn in turns if isinstance(turn, dict)
            for p in (turn.get("parts") or []) if isinstance(p, dict)
        )
        self._log(t, "in", "client_content", len(text), text[:80] or None)
        if field_of(cc, "turn_complete"):
            return self._answer(t, user_s=None)
        return []

    def _tool_response(self, t: float, tr: dict[str, Any]) -> list[Action]:
        responses = field_of(tr, "function_responses") or []
        ids = [str(r.get("id")) for r in responses if isinstance(r, dict)]
        self._log(t, "in", "tool_response", 0, ",".join(ids))
        if self.pending_tool is not None and self.pending_tool in ids:
            self.pending_tool = None
            self._speak(t + self.config.latency_s, user_s=None)
        return []

    # -- answers -------------------------------------------------------------
    def _answer(self, t: float, user_s: float | None) -> list[Action]:
        assert self.conversation is not None
        nr = self._fault("no-response")
        if user_s is not None and nr is not None and (nr.arg is None or int(nr.arg) == self.activities):
            self._log(t, "out", "fault", 0, f"no-response: ignoring the end of activity {self.activities}")
            return []
        self.conversation.answers += 1
        n = self.conversation.answers
        st = self._fault("stall")
        if user_s is not None and st is not None:
            seconds = float(st.arg or 30.0)
            self._log(t, "out", "fault", 0, f"stall: not reading the socket for {seconds} s")
            self.fault = None  # once
            return [PauseReading(seconds)]
        latency = self.config.latency_s
        slow = self._fault("slow")
        if slow is not None:
            latency = float(slow.arg or 8.0)
        start = t + latency
        if user_s is not None:
            heard = {"inputTranscription": {"text": f"[user audio {user_s:.1f} s]"}}
            self._at(start, SendJson({"serverContent": heard}))
        if user_s is not None and n in self.config.tool_call_turns and self.tools:
            call_id = f"call-{self.conn}-{n}"
            name = self.tools[(n - 1) % len(self.tools)]
            self.pending_tool = call_id
            self._at(start, SendJson({"toolCall": {"functionCalls": [{"id": call_id, "name": name, "args": {}}]}}))
            return []
        self._speak(start, user_s)
        return []

    def _speak(self, start: float, user_s: float | None) -> None:
        assert self.conversation is not None
        cfg = self.config
        n = self.conversation.answers
        audio = speech_like(cfg.reply_s, seed=n)
        step = int(MODEL_RATE * cfg.chunk_ms / 1000)
        dt = cfg.chunk_ms / 1000 / cfg.pace
        words = [cfg.words[(n + i) % len(cfg.words)] for i in range(3)]
        mid = self._fault("close-1011")
        t = start
        for i, j in enumerate(range(0, audio.size, step)):
            chunk = audio[j : j + step].astype("<i2").tobytes()
            self._at(t, SendJson({"serverContent": {"modelTurn": {"parts": [{"inlineData": {
                "mimeType": f"audio/pcm;rate={MODEL_RATE}", "data": base64.b64encode(chunk).decode()}}]}}}))
            if i % 8 == 0 and words:
                self._at(t, SendJson({"serverContent": {"outputTranscription": {"text": words.pop(0) + " "}}}))
            if mid is not None and mid.arg == "mid-turn" and user_s is not None and i == 3:
                self._at(t, Close(1011, "Internal error encountered."))
            t += dt
        self._at(t, SendJson({"serverContent": {"generationComplete": True}}))
        self._at(t, SendJson({"serverContent": {"turnComplete": True}}))
        if self.resumption:
            self.conversation.handles += 1
            handle = f"conv{self.conversation.id}-h{self.conversation.handles}"
            self.conversations[handle] = self.conversation
            self._at(t, SendJson({"sessionResumptionUpdate": {"newHandle": handle, "resumable": True}}))
        ga = self._fault("go-away")
        if ga is not None and user_s is not None:
            left = float(ga.arg or 2.0)
            self._at(t + 0.05, SendJson({"goAway": {"timeLeft": f"{left:g}s"}}))
            self._at(t + 0.05 + left, Close(1000, "Session time limit reached."))
            self.fault = None

    # -- time ----------------------------------------------------------------
    def tick(self, t: float) -> list[Action]:
        """Everything due by ``t``, in order."""
        out: list[Action] = []
        if self.closed:
            return out
        if self._flood_next is not None:
            f = self._fault("flood")
            rate = float(f.arg or 50.0) if f else 50.0
            while self._flood_next <= t:
                out.append(SendJson({"serverContent": {"inputTranscription": {"text": "."}}}))
                self._log(self._flood_next, "out", "input_transcription", 1, "flood")
                self._flood_next += 1.0 / rate
        while self._queue and self._queue[0][0] <= t:
            due, _, action = heapq.heappop(self._queue)
            if isinstance(action, Close):
                out += self._close(due, action.code, action.reason)
                break
            if isinstance(action, SendJson):
                self._log(due, "out", _server_kind(action.payload))
            out.append(action)
        return out

    def _close(self, t: float, code: int, reason: str) -> list[Action]:
        self.closed = True
        self._queue.clear()
        self._log(t, "out", "close", 0, f"{code} {reason}")
        return [Close(code, reason)]


def _server_kind(payload: dict[str, Any]) -> str:
    if "serverContent" in payload:
        sc = payload["serverContent"]
        for key, kind in (("modelTurn", "model_audio"), ("outputTranscription", "output_transcription"),
                          ("inputTranscription", "input_transcription"), ("turnComplete", "turn_complete"),
                          ("generationComplete", "generation_complete")):
            if key in sc:
                return kind
    for key, kind in (("toolCall", "tool_call"), ("goAway", "go_away"),
                      ("sessionResumptionUpdate", "session_resumption_update")):
        if key in payload:
            return kind
    return "other"
