"""The Live session's I/O shell: client set-up, the one ordered writer, the persistent receive loop.

Facts this module relies on (see DESIGN.md, checked against google-genai's source):
``session.receive()`` stops after each ``turn_complete``, so the receive loop wraps it in
``while True``; ``send_realtime_input`` serialises and writes a whole frame before its first
await, so one writer task draining one queue makes the wire order the queue order.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from google import genai
from google.genai import types

from workbench.core.connection import Incoming
from workbench.core.events import ClientMsg, Error, Event, Sent, Server, ServerMsg, Stage
from workbench.core.pcm import MODEL_RATE, SENT_RATE
from workbench.core.sender import Outgoing, TextTurn, ToolReply

DEFAULT_MODEL = "gemini-2.5-flash-native-audio-preview-12-2025"
SYSTEM_INSTRUCTION = (
    "You are a friendly job interviewer. Ask one short question at a time and wait for the candidate's answer."
)
GREETING_PROMPT = "The candidate has joined. Greet them briefly and ask the first interview question."


def interview_tools() -> list[types.Tool]:
    """Four function declarations shaped like the field report's interview platform."""
    s = types.Schema
    T = types.Type
    decls = [
        types.FunctionDeclaration(
            name="record_answer_score",
            description="Score the candidate's last answer.",
            parameters=s(
                type=T.OBJECT,
                properties={"question_id": s(type=T.STRING), "score": s(type=T.INTEGER), "notes": s(type=T.STRING)},
                required=["question_id", "score"],
            ),
        ),
        types.FunctionDeclaration(
            name="next_question",
            description="Fetch the next interview question.",
            parameters=s(type=T.OBJECT, properties={"topic": s(type=T.STRING)}),
        ),
        types.FunctionDeclaration(
            name="flag_concern",
            description="Flag a concern about the interview for a human reviewer.",
            parameters=s(type=T.OBJECT, properties={"reason": s(type=T.STRING)}, required=["reason"]),
        ),
        types.FunctionDeclaration(
            name="end_interview",
            description="End the interview politely.",
            parameters=s(type=T.OBJECT, properties={"summary": s(type=T.STRING)}),
        ),
    ]
    return [types.Tool(function_declarations=decls)]


@dataclass
class LiveSettings:
    """Where and how to connect; the keepalive knobs are websockets' own and are recorded."""

    model: str = DEFAULT_MODEL
    base_url: str | None = None  # None: Google's endpoint
    api_key: str | None = None
    ssl_context: ssl.SSLContext | None = None
    # Pings still go out every 20 s and their pongs are recorded, but a late pong never closes the
    # connection: Gemini's pongs come 8-30 s late (aicc2025/sip-to-ai PR #14), which trips websockets'
    # default 20 s timeout with 1011 while content flows (googleapis/python-genai #2935).  A dead
    # connection is found by the client core instead: no server frame while an answer is due.
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = None
    max_queue: int | None = 16
    close_timeout_s: float = 5.0
    resume: bool = True  # ask for session resumption handles (needed to reconnect without losing context)
    # transparent resumption adds lastConsumedClientMessageIndex to each handle; google-genai refuses it in
    # Gemini Developer API mode ("only supported in Gemini Enterprise Agent Platform mode"), so off by default
    transparent: bool = False
    system_instruction: str = SYSTEM_INSTRUCTION
    greeting_prompt: str | None = GREETING_PROMPT
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """What goes into session.json (no secrets)."""
        return {
            "model": self.model,
            "endpoint": self.base_url or "google",
            "ping_interval_s": self.ping_interval_s,
            "ping_timeout_s": self.ping_timeout_s,
            "max_queue": self.max_queue,
            "close_timeout_s": self.close_timeout_s,
            "greeting": self.greeting_prompt is not None,
            "resume": self.resume,
            "transparent": self.transparent,
        }


GOOGLE_KEY_ENV = "GEMINI_API_KEY"
_KEY_HEADER = "x-goog-api-key"
_NO_KEY = "no-key"  # what the SDK is given when no key may be sent (its header is then taken off)


def api_key_for(settings: LiveSettings) -> str | None:
    """The API key a session may send: the one the user named (``settings.api_key``), else ``GEMINI_API_KEY`` for
    Google's endpoint only.  The embedded emulator and any ``base_url`` get no key unless one was named."""
    if settings.api_key:
        return settings.api_key
    if settings.base_url:
        return None
    return os.environ.get(GOOGLE_KEY_ENV) or None


def make_client(settings: LiveSettings, create_connection: type | None = None) -> genai.Client:
    """A genai client whose websocket uses our keepalive settings and (optionally) a wire tap.

    The key rule (``api_key_for``): ``GEMINI_API_KEY`` goes to Google's endpoint only.  For another endpoint
    with no key named, the SDK still needs a key to take its API-key path, and given none it would read
    ``GEMINI_API_KEY``/``GOOGLE_API_KEY`` from the environment itself; so it gets a placeholder and the
    header that would carry it is removed: nothing key-like goes out (the emulator logs ``api_key`` absent).
    Raises ValueError for Google's endpoint without a key.
    """
    args: dict[str, Any] = {
        "ping_interval": settings.ping_interval_s,
        "ping_timeout": settings.ping_timeout_s,
        "max_queue": settings.max_queue,
        "close_timeout": settings.close_timeout_s,
    }
    if settings.ssl_context is not None:
        args["ssl"] = settings.ssl_context
    if create_connection is not None:
        args["create_connection"] = create_connection
    options = types.HttpOptions(async_client_args=args)
    if settings.base_url:
        options.base_url = settings.base_url
    api_key = api_key_for(settings)
    if api_key:
        return genai.Client(api_key=api_key, http_options=options)
    if not settings.base_url:
        raise ValueError(f"Google's Live endpoint needs an API key: set {GOOGLE_KEY_ENV} (or name one)")
    client = genai.Client(api_key=_NO_KEY, http_options=options)
    # google-genai 3.x keeps the key header in the client's http options, which live.connect() sends as is.
    headers = getattr(getattr(getattr(client, "_api_client", None), "_http_options", None), "headers", None)
    if not isinstance(headers, dict) or headers.get(_KEY_HEADER) != _NO_KEY:
        raise RuntimeError("this google-genai keeps its API key header where make_client does not expect it")
    del headers[_KEY_HEADER]
    return client


def connect_config(settings: LiveSettings, resume_handle: str | None = None) -> types.LiveConnectConfig:
    """Manual activity detection, audio out, transcripts, tools, resumption: the field report's setup."""
    return types.LiveConnectConfig(
        response_modalities=[types.Modality.AUDIO],
        system_instruction=settings.system_instruction,
        realtime_input_config=types.RealtimeInputConfig(
            automatic_activity_detection=types.AutomaticActivityDetection(disabled=True)
        ),
        input_audio_transcription=types.AudioTranscriptionConfig(),
        output_audio_transcription=types.AudioTranscriptionConfig(),
        thinking_config=types.ThinkingConfig(thinking_budget=0),
        tools=interview_tools(),
        session_resumption=types.SessionResumptionConfig(
            handle=resume_handle, transparent=True if settings.transparent else None) if settings.resume else None,
    )


WriterItem = Outgoing | ToolReply | TextTurn


class Queued(NamedTuple):
    """One item in the writer's queue: the connection it is for and the turn it belongs to (None: no turn)."""

    gen: int
    item: WriterItem
    turn: int | None = None
    attempt: int | None = None


class Writer:
    """The only task that writes to the session: everything goes through one FIFO queue.

    It outlives connections: ``attach`` hands it a new session (and what to re-send first) and
    drops what was queued for the old one; while detached it waits.  Stopping is by queue (a
    ``None`` sentinel), never by cancelling a task inside ``ws.send``.  ``on_lost(conn, exc)``
    reports a send that failed on connection ``conn`` (the ``gen`` it was queued for).  Each
    ``Sent`` it records carries that connection and the ``turn`` / ``attempt`` it was ``put`` with.
    """

    def __init__(
        self,
        session: Any,
        emit: Callable[[Event], None],
        clock: Callable[[], float],
        on_audio: Callable[[np.ndarray], None] | None = None,
        on_lost: Callable[[int, BaseException], None] | None = None,
    ) -> None:
        self.emit = emit
        self.clock = clock
        self.on_audio = on_audio
        self.on_lost = on_lost
        self.queue: asyncio.Queue[Queued | None] = asyncio.Queue()
        self.seq = 0
        self.failed: BaseException | None = None
        self.session: Any = None
        self.gen = 0  # connection number the queued items are for
        self.connected = asyncio.Event()
        if session is not None:
            self.attach(session)

    def attach(self, session: Any, first: list[WriterItem] | None = None, conn: int | None = None) -> None:
        """Write to ``session`` (connection ``conn``, default the next) from now on, starting with ``first``;
        items queued before are dropped."""
        self.gen = self.gen + 1 if conn is None else conn
        self._drain()
        self.session = session
        self.failed = None
        for item in first or []:
            self.put(item)
        self.connected.set()

    def detach(self) -> None:
        """Hold everything queued until the next ``attach`` (the connection is being replaced)."""
        self.connected.clear()

    def _drain(self) -> None:
        stop = False
        while not self.queue.empty():
            stop |= self.queue.get_nowait() is None
        if stop:
            self.queue.put_nowait(None)

    def put(self, item: WriterItem, turn: int | None = None, attempt: int | None = None) -> None:
        """Queue ``item`` for the current connection; ``turn`` / ``attempt`` go on its ``Sent`` event.  Anything but
        a ``WriterItem`` raises TypeError here, at the caller, not later in the writer task (where a failed send
        means a lost connection)."""
        if not isinstance(item, Outgoing | ToolReply | TextTurn):
            raise TypeError(f"the writer sends Outgoing, ToolReply and TextTurn, not {type(item).__name__}")
        self.queue.put_nowait(Queued(self.gen, item, turn, attempt))

    def stop(self) -> None:
        self.queue.put_nowait(None)

    async def run(self) -> None:
        while (entry := await self.queue.get()) is not None:
            await self._write(entry)

    async def _write(self, entry: Queued) -> None:
        """Send one item if its connection is still the current one; report a failure once."""
        await self.connected.wait()
        gen = entry.gen
        if gen != self.gen:
            return  # queued for a connection that is gone: the client core decides what to re-send
        try:
            await self._send(entry)
        except Exception as exc:  # the connection is gone: record it, wait for the next one
            self.emit(Error(t=self.clock(), where="writer", message=f"{type(exc).__name__}: {exc}"))
            if gen == self.gen and self.connected.is_set():
                self.failed = exc
                self.connected.clear()
                if self.on_lost is not None:
                    self.on_lost(gen, exc)

    async def _send(self, entry: Queued) -> None:
        self.seq += 1
        session, item = self.session, entry.item
        on = {"conn": entry.gen or None, "turn": entry.turn, "attempt": entry.attempt}
        match item:
            case Outgoing(msg=ClientMsg.AUDIO, audio=audio):
                assert audio is not None
                data = audio.astype("<i2").tobytes()
                self.emit(Sent(t=self.clock(), msg=ClientMsg.AUDIO, n_bytes=len(data), seq=self.seq,
                               n_samples=audio.size, **on))
                await session.send_realtime_input(audio=types.Blob(data=data, mime_type=f"audio/pcm;rate={SENT_RATE}"))
                if self.on_audio is not None:
                    self.on_audio(audio)
            case Outgoing(msg=ClientMsg.ACTIVITY_START):
                self.emit(Sent(t=self.clock(), msg=ClientMsg.ACTIVITY_START, n_bytes=0, seq=self.seq, **on))
                await session.send_realtime_input(activity_start=types.ActivityStart())
            case Outgoing(msg=ClientMsg.ACTIVITY_END):
                self.emit(Sent(t=self.clock(), msg=ClientMsg.ACTIVITY_END, n_bytes=0, seq=self.seq, **on))
                await session.send_realtime_input(activity_end=types.ActivityEnd())
            case ToolReply(responses=responses):
                self.emit(Sent(t=self.clock(), msg=ClientMsg.TOOL_RESPONSE, n_bytes=0, seq=self.seq, **on))
                await session.send_tool_response(function_responses=responses)
            case TextTurn(text=text):
                self.emit(Sent(t=self.clock(), msg=ClientMsg.CLIENT_CONTENT, n_bytes=len(text), seq=self.seq, **on))
                await session.send_client_content(
                    turns=types.Content(role="user", parts=[types.Part(text=text)]), turn_complete=True
                )


def describe_server_message(msg: types.LiveServerMessage) -> list[tuple[ServerMsg, dict[str, Any]]]:
    """Split one server message into (kind, fields) pairs for events; unknown content is kept by name."""
    out: list[tuple[ServerMsg, dict[str, Any]]] = []
    if msg.setup_complete is not None:
        out.append((ServerMsg.SETUP_COMPLETE, {}))
    sc = msg.server_content
    if sc is not None:
        if sc.model_turn and sc.model_turn.parts:
            for part in sc.model_turn.parts:
                if part.inline_data and part.inline_data.data:
                    out.append((ServerMsg.MODEL_AUDIO, {"n_bytes": len(part.inline_data.data),
                                                "n_samples": len(part.inline_data.data) // 2}))
                elif part.text:
                    out.append((ServerMsg.MODEL_TEXT, {"text": part.text}))
        if sc.input_transcription and sc.input_transcription.text:
            out.append((ServerMsg.INPUT_TRANSCRIPTION, {"text": sc.input_transcription.text}))
        if sc.output_transcription and sc.output_transcription.text:
            out.append((ServerMsg.OUTPUT_TRANSCRIPTION, {"text": sc.output_transcription.text}))
        if sc.interrupted:
            out.append((ServerMsg.INTERRUPTED, {}))
        if sc.generation_complete:
            out.append((ServerMsg.GENERATION_COMPLETE, {}))
        if sc.turn_complete:
            out.append((ServerMsg.TURN_COMPLETE, {}))
    if msg.tool_call is not None:
        names = ",".join(fc.name or "?" for fc in msg.tool_call.function_calls or [])
        out.append((ServerMsg.TOOL_CALL, {"detail": names}))
    if msg.tool_call_cancellation is not None:
        out.append((ServerMsg.TOOL_CALL_CANCELLATION, {}))
    if msg.go_away is not None:
        out.append((ServerMsg.GO_AWAY, {"detail": str(msg.go_away.time_left)}))
    if msg.session_resumption_update is not None:
        u = msg.session_resumption_update
        out.append((ServerMsg.SESSION_RESUMPTION_UPDATE, {"detail": f"resumable={u.resumable} handle={u.new_handle}"}))
    if msg.usage_metadata is not None:
        out.append((ServerMsg.USAGE_METADATA, {}))
    if not out:
        fields = sorted(k for k, v in msg.model_dump(exclude_none=True).items() if v not in ({}, []))
        out.append((ServerMsg.UNKNOWN, {"detail": ",".join(fields) or "empty"}))
    return out


def _seconds(duration: Any) -> float | None:
    """goAway's timeLeft: the SDK gives a ``datetime.timedelta`` (or a "50s" string from older versions)."""
    if duration is None:
        return None
    if hasattr(duration, "total_seconds"):
        return float(duration.total_seconds())
    try:
        return float(str(duration).rstrip("s"))
    except ValueError:
        return None


def incoming(msg: types.LiveServerMessage) -> list[Incoming]:
    """The facts of one server message the client core decides on, in the order they matter."""
    out: list[Incoming] = []
    sc = msg.server_content
    if sc is not None:
        if sc.input_transcription and sc.input_transcription.text:
            out.append(Incoming("input_transcription"))
        if sc.model_turn and sc.model_turn.parts:
            n = sum(len(p.inline_data.data) // 2 for p in sc.model_turn.parts if p.inline_data and p.inline_data.data)
            out.append(Incoming("model_audio", audio_s=n / MODEL_RATE))
        if sc.output_transcription and sc.output_transcription.text:
            out.append(Incoming("output_transcription"))
        if sc.interrupted:
            out.append(Incoming("interrupted"))
        if sc.generation_complete:
            out.append(Incoming("generation_complete"))
        if sc.turn_complete:
            out.append(Incoming("turn_complete"))
    if msg.tool_call is not None:
        calls = tuple((fc.id or "", fc.name or "", dict(fc.args or {})) for fc in msg.tool_call.function_calls or [])
        out.append(Incoming("tool_call", calls=calls))
    if msg.tool_call_cancellation is not None:
        out.append(Incoming("tool_call_cancellation", call_ids=tuple(msg.tool_call_cancellation.ids or ())))
    if msg.go_away is not None:
        out.append(Incoming("go_away", time_left_s=_seconds(msg.go_away.time_left)))
    u = msg.session_resumption_update
    if u is not None:
        out.append(Incoming("session_resumption_update", handle=u.new_handle, resumable=u.resumable,
                            last_consumed=u.last_consumed_client_message_index))
    if not out:
        out.append(Incoming("other"))
    return out


def server_events(msg: types.LiveServerMessage, t: float) -> list[Server]:
    return [Server(t=t, msg=kind, stage=Stage.APP, **fields) for kind, fields in describe_server_message(msg)]


async def receive_forever(session: Any, on_message: Callable[[types.LiveServerMessage], None]) -> None:
    """Read the session for its whole life: ``receive()`` ends at every turn_complete, so loop."""
    while True:
        async for msg in session.receive():
            on_message(msg)
