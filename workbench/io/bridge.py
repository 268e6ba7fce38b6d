"""The full bridge for one session: mic track -> ingest -> resample -> turn detector -> writer -> Live.

This is the asyncio shell.  The decisions are made by sans-I/O cores (``TurnDetector``,
``SendOrder`` on the mic side, ``connection.ClientCore`` for the connection's life: what to
send, when to reconnect and with which handle, what to re-send, when to give up); this module
moves frames and messages between them, the WebRTC track, the Live session and the recorder,
carries out the client core's actions, and keeps the clock running while ``track.recv()`` waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiortc.mediastreams import MediaStreamTrack
from google.genai import types

from workbench.core.connection import (
    Act,
    Action,
    CancelTool,
    ClientCore,
    Connect,
    GiveUp,
    Reason,
    Record,
    RecoveryConfig,
    RunTool,
    Send,
)
from workbench.core.events import Client, Error, Event, LoopLag, SessionMark, Ws
from workbench.core.params import TurnParams
from workbench.core.pcm import MIC_RATE
from workbench.core.pipeline import SEND_CHUNK_MS, MicPipeline
from workbench.core.sender import Outgoing
from workbench.io import live, naive
from workbench.io.endmodel import EndModelWorker
from workbench.io.eventloop import running_loop_name
from workbench.io.ingest import Received, ingest
from workbench.io.media import FilePlayerTrack
from workbench.io.webrtc import loopback
from workbench.io.wiretap import tapped_connection
from workbench.store.recording import Observer, Recorder

LOOP_LAG_PERIOD_S = 0.1
CONNECT_TIMEOUT_S = 15.0  # TLS, websocket handshake, setup -> setupComplete


@dataclass
class SessionConfig:
    """Everything one session needs besides its audio; recorded in session.json.

    The recovery bounds (watchdog, re-sends, reconnects, goAway margin) are the client core's
    (``connection.RecoveryConfig``); see README "Recovery rules" for what each one does.
    """

    params: TurnParams = field(default_factory=TurnParams)
    live: live.LiveSettings = field(default_factory=live.LiveSettings)
    dtx: bool = False
    tail_s: float = 1.5  # digital silence played after the source, so the last turn can end on the clock
    greeting_timeout_s: float = 15.0  # the mic opens after this even if the greeting is still unanswered
    response_timeout_s: float = 10.0  # after the mic ends, with no watchdog to recover: stop waiting for answers
    reconnect: bool = True  # on 1011 / 1006 / goAway / watchdog: resume with the latest clean handle, re-send turns
    watchdog_s: float | None = 5.0  # no response this long after a turn went out: reconnect and re-send it
    watchdog_action: str = "reconnect"  # "reconnect" (resume and re-send the turn) or "none" (record only)
    heard_timeout_s: float = 20.0  # the server heard the turn (input transcription): wait up to this instead
    dead_connection_s: float | None = 8.0  # no server frame at all this long while an answer is due: reconnect
    max_resends: int = 2  # re-sends of one user turn before giving up (the greeting: retried once)
    max_reconnects: int = 5  # reconnects allowed in any window of reconnect_window_s, then give up
    reconnect_window_s: float = 60.0
    go_away_margin_s: float = 5.0  # after goAway, switch connections by timeLeft minus this
    tool_s: float = 0.0  # how long the stand-in interview tools take to answer a tool call
    naive: str | None = None  # one of naive.MODES: reproduce a field-report mistake
    send_chunk_ms: float = SEND_CHUNK_MS  # audio per message at least this long (ActivityEnd flushes it first)
    name: str = "session"
    source: str = ""

    def __post_init__(self) -> None:
        naive.check_mode(self.naive)
        if not self.send_chunk_ms >= 0:
            raise ValueError(f"send chunk must be >= 0 ms, got {self.send_chunk_ms}")
        self.recovery()  # validates the recovery bounds

    def recovery(self) -> RecoveryConfig:
        return RecoveryConfig(
            reconnect=self.reconnect, watchdog_s=self.watchdog_s, watchdog_action=self.watchdog_action,
            heard_timeout_s=self.heard_timeout_s, dead_connection_s=self.dead_connection_s,
            max_resends=self.max_resends, max_reconnects=self.max_reconnects,
            reconnect_window_s=self.reconnect_window_s, go_away_margin_s=self.go_away_margin_s,
            response_timeout_s=self.response_timeout_s, greeting_timeout_s=self.greeting_timeout_s,
            resume=self.live.resume)

    def describe(self) -> dict[str, Any]:
        return {**self.recovery().describe(), "naive": self.naive, "send_chunk_ms": self.send_chunk_ms,
                "tool_s": self.tool_s}


@dataclass
class SessionResult:
    path: Path
    activities: int
    answered: int  # turn_completes, the greeting's included
    error: str | None = None
    unanswered: int = 0  # turns (greeting included) that never got their answer
    reconnects: int = 0
    gave_up: dict[str, str] | None = None  # {"reason": ..., "detail": ...} when the client core gave up


class _Session:
    """State of one running session: carries out the client core's actions.

    Every decision (reconnect, re-send, wait longer, give up, ...) is the core's
    (``connection.ClientCore``); this shell opens and closes sockets, runs the receive loop
    and the one writer, runs tool calls, and records each decision as a ``Client`` event.
    The mic side never waits for a reconnect: the core holds its messages meanwhile.
    """

    def __init__(self, cfg: SessionConfig, recorder: Recorder, progress: Callable[[str], None] | None,
                 end_model: EndModelWorker | None = None) -> None:
        self.cfg = cfg
        self.rec = recorder
        self.progress = progress or (lambda _msg: None)
        self.t0 = time.monotonic()
        handle = None if end_model is None or cfg.params.end_model == "none" else end_model.session(cfg.name)
        self.mic = MicPipeline(cfg.params, send_chunk_ms=cfg.send_chunk_ms, end_model=handle)
        if cfg.naive == "frame-count":
            self.mic.detector = naive.FrameCountDetector(cfg.params)  # type: ignore[assignment]
        self.core = ClientCore(cfg.recovery())
        writer_cls = naive.TwoTaskWriter if cfg.naive == "two-tasks" else live.Writer
        self.writer = writer_cls(None, recorder.emit, self.clock, on_audio=recorder.sent, on_lost=self.on_writer_lost)
        self.receive = naive.receive_once if cfg.naive == "receive-once" else live.receive_forever
        self.client: Any = None
        self.attached = 0  # connection the writer writes to
        self.stack: contextlib.AsyncExitStack | None = None
        self.receiver: asyncio.Task[None] | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.tools: dict[str, asyncio.Task[None]] = {}
        self.turn_completes = 0
        self.changed = asyncio.Event()  # the core's state may have changed: waiters re-check
        self.first_error: BaseException | None = None

    def clock(self) -> float:
        return time.monotonic() - self.t0

    def emit(self, event: Event) -> None:
        self.rec.emit(event)

    # -- carrying out the core's actions -------------------------------------------------------------
    def act(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Send):
                if a.conn == self.attached:
                    self.writer.put(a.item, a.turn, a.attempt)
            elif isinstance(a, Record):
                self.emit(a.event)
            elif isinstance(a, Connect):
                self.connecting = asyncio.create_task(self.connect(a))
            elif isinstance(a, RunTool):
                self.tools[a.call_id] = asyncio.create_task(self.run_tool(a))
            elif isinstance(a, CancelTool):
                for call_id in a.call_ids:
                    task = self.tools.pop(call_id, None)
                    if task is not None:
                        task.cancel()
            elif isinstance(a, GiveUp):
                self.progress(f"giving up ({a.reason}: {a.detail})")
        self.changed.set()

    async def connect(self, a: Connect) -> None:
        """Close the current socket first (a resume while it is open is rejected live), then open ``a.conn``."""
        if a.conn > 1 and not a.retry:  # one ``ws reconnect`` per decision to replace the connection
            self.emit(Ws(t=self.clock(), what="reconnect", detail=f"conn {a.conn - 1}"))
            self.progress(f"reconnecting (connection {a.conn})")
        self.writer.detach()
        await self.close_connection()
        if a.delay_s:
            await asyncio.sleep(a.delay_s)
        stack = contextlib.AsyncExitStack()
        config = live.connect_config(self.cfg.live, resume_handle=a.handle)
        try:
            # bounded: a server that accepts the socket but never sends setupComplete is a failed connect
            session = await asyncio.wait_for(stack.enter_async_context(
                self.client.aio.live.connect(model=self.cfg.live.model, config=config)), CONNECT_TIMEOUT_S)
        except Exception as exc:
            await stack.aclose()
            if a.conn == 1:
                self.first_error = exc
            else:
                self.emit(Error(t=self.clock(), where="reconnect", message=f"conn {a.conn}: {_one_line(exc)}"))
            self.connecting = None
            self.act(self.core.connect_failed(self.clock(), a.conn, _close_code(exc), _one_line(exc)))
            return
        self.stack = stack
        resumed = f", resumed with handle {a.handle}" if a.handle else ""
        self.emit(Ws(t=self.clock(), what="connect", detail=f"conn {a.conn}{resumed}"))
        self.emit(SessionMark(t=self.clock(), what="setup_complete", detail=f"conn {a.conn}"))
        self.receiver = asyncio.create_task(self._receive(session, a.conn))
        self.writer.attach(session, conn=a.conn)
        self.attached = a.conn
        self.connecting = None
        actions = self.core.opened(self.clock(), a.conn)
        resent = [r.event.turn for r in actions if isinstance(r, Record) and isinstance(r.event, Client)
                  and r.event.action == Act.RESEND]
        if resent:  # kept for readers of older recordings' marks; the facts are the Client events' fields
            self.emit(SessionMark(t=self.clock(), what="resend", detail=f"conn {a.conn}: turn(s) {resent}"))
        self.act(actions)

    async def _receive(self, session: Any, conn: int) -> None:
        try:
            await self.receive(session, lambda msg: self.on_server(msg, conn))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.act(self.core.lost(self.clock(), conn, Reason.CLOSED, f"receive loop: {_one_line(exc)}"))
        # receive_forever only returns by raising; naive.receive_once returns after the first
        # turn_complete and from then on nobody reads this connection.

    async def close_connection(self) -> None:
        """Close the current socket, never mid-send (the writer is detached first)."""
        if self.receiver is not None:
            self.receiver.cancel()
            with contextlib.suppress(BaseException):
                await self.receiver
            self.receiver = None
        if self.stack is not None:
            stack, self.stack = self.stack, None
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(stack.aclose(), self.cfg.live.close_timeout_s + 1.0)

    def on_writer_lost(self, conn: int, exc: BaseException) -> None:
        self.act(self.core.lost(self.clock(), conn, Reason.SEND_FAILED, f"send failed: {_one_line(exc)}"))

    async def run_tool(self, call: RunTool) -> None:
        """The interview tools do nothing but acknowledge, after ``tool_s``; a cancelled call never replies."""
        await asyncio.sleep(self.cfg.tool_s)
        self.tools.pop(call.call_id, None)
        reply = live.ToolReply([types.FunctionResponse(id=call.call_id, name=call.name, response={"ok": True})])
        self.act(self.core.tool_done(self.clock(), call.call_id, reply))

    # -- server side -------------------------------------------------------
    def on_server(self, msg: types.LiveServerMessage, conn: int) -> None:
        t = self.clock()
        for ev in live.server_events(msg, t):
            self.emit(ev)
        sc = msg.server_content
        if sc is not None and sc.model_turn and sc.model_turn.parts:
            for part in sc.model_turn.parts:
                if part.inline_data and part.inline_data.data:
                    self.rec.model(np.frombuffer(part.inline_data.data, dtype="<i2"))
        if sc is not None and sc.turn_complete:
            self.turn_completes += 1
        for fact in live.incoming(msg):
            self.act(self.core.server(t, conn, fact))

    # -- mic side ----------------------------------------------------------
    def send(self, item: live.WriterItem) -> None:
        """Through the core (it files the message under its turn and says when it goes out)."""
        self.act(self.core.send(self.clock(), item))

    def handle_outputs(self, outputs: list[Event | Outgoing]) -> None:
        """Events go to the recorder, messages to the core, in the order the pipeline made them."""
        for o in outputs:
            if isinstance(o, Outgoing):
                self.send(o)
            else:
                self.rec.emit(o)

    def on_frame(self, item: Received) -> None:
        self.rec.mic(item.t, int(round(item.pts_s * MIC_RATE)), item.samples)
        self.handle_outputs(self.mic.frame(item.t, item.pts_s, item.samples))

    def on_tick(self, t: float) -> None:
        self.handle_outputs(self.mic.tick(t))

    async def sample_loop_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + LOOP_LAG_PERIOD_S
            await asyncio.sleep(LOOP_LAG_PERIOD_S)
            t = self.clock()
            self.emit(LoopLag(t=t, lag_ms=round((loop.time() - due) * 1000.0, 3)))
            self.act(self.core.tick(t))

    async def wait_for(self, done: Callable[[], bool], timeout_s: float | None = None) -> None:
        """Until ``done()`` holds (checked whenever the core acts), or ``timeout_s`` passes."""
        deadline = None if timeout_s is None else self.clock() + timeout_s
        while not done():
            self.changed.clear()
            left = None if deadline is None else deadline - self.clock()
            if left is not None and left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)


async def run_session(
    source: np.ndarray | MediaStreamTrack,
    cfg: SessionConfig,
    out_dir: str | Path,
    progress: Callable[[str], None] | None = None,
    observer: Observer | None = None,
    end_model: EndModelWorker | None = None,
) -> SessionResult:
    """Bridge one microphone into a Live session, recording everything (``observer`` sees it too).

    ``source`` is either int16 mono 48 kHz audio, played through a loopback WebRTC link by a
    ``FilePlayerTrack``, or a received WebRTC audio track (a browser's), consumed until it ends.
    ``end_model``: the runner's shared end-of-turn worker (``io.endmodel.EndModelWorker``), used when
    ``cfg.params.end_model`` names a model; without one, this session starts its own and closes it
    before returning (no thread or process outlives the call).
    """
    audio_48k = source if isinstance(source, np.ndarray) else None
    meta: dict[str, Any] = {
        "name": cfg.name,
        "source": cfg.source,
        "params": cfg.params.to_dict(),
        "live": cfg.live.describe(),
        "bridge": cfg.describe(),
        "dtx": cfg.dtx,
        "tail_s": cfg.tail_s,
        "audio_s": None if audio_48k is None else round(audio_48k.size / MIC_RATE, 3),
        "event_loop": running_loop_name(),
    }
    own_model = None
    if end_model is None and cfg.params.end_model != "none":
        # Off the loop: starting the worker's process takes a few ms; raises the one-line "needs the file".
        own_model = end_model = await asyncio.to_thread(EndModelWorker, cfg.params.end_model)
    try:
        return await _run_session(source, cfg, out_dir, progress, observer, end_model, audio_48k, meta)
    finally:
        if own_model is not None:
            await asyncio.to_thread(own_model.close)  # joins the worker thread and process off the loop


async def _run_session(source: np.ndarray | MediaStreamTrack, cfg: SessionConfig, out_dir: str | Path,
                       progress: Callable[[str], None] | None, observer: Observer | None,
                       end_model: EndModelWorker | None, audio_48k: np.ndarray | None,
                       meta: dict[str, Any]) -> SessionResult:
    rec = Recorder(out_dir, meta, observer=observer)
    s = _Session(cfg, rec, progress, end_model)
    rec.meta["t0_monotonic"] = s.t0
    rec.emit(SessionMark(t=0.0, what="start", detail=cfg.name + (f" (naive: {cfg.naive})" if cfg.naive else "")))
    error: str | None = None
    tasks: list[asyncio.Task[Any]] = [asyncio.create_task(s.sample_loop_lag())]
    link = None
    try:
        # On a thread: building the SDK client loads the CA bundle into several SSL contexts, tens of ms each
        # (bench/BENCHMARKS.md, "Costs behind the code's choices") that would stall every other session on this
        # loop (OpenSSL releases the GIL meanwhile).
        s.client = await asyncio.to_thread(
            live.make_client, cfg.live, create_connection=tapped_connection(rec.emit, s.clock))
        s.progress("connecting")
        s.act(s.core.start(s.clock()))
        await s.wait_for(lambda: s.attached > 0 or s.core.finished)
        if s.first_error is not None:
            raise s.first_error
        writer_task = asyncio.create_task(s.writer.run())
        tasks.append(writer_task)
        if cfg.live.greeting_prompt:
            s.progress("waiting for the greeting")
            s.send(live.TextTurn(cfg.live.greeting_prompt))
            await s.wait_for(lambda: s.core.greeting_settled or s.core.finished)  # bounded: greeting_timeout_s
        rec.emit(SessionMark(t=s.clock(), what="mic_open"))
        s.progress("playing the microphone")
        if audio_48k is not None:
            link = await loopback(FilePlayerTrack(audio_48k, dtx=cfg.dtx, tail_s=cfg.tail_s))
            mic_track: MediaStreamTrack = link.remote_track
        else:
            assert isinstance(source, MediaStreamTrack)
            mic_track = source
        mic = asyncio.create_task(ingest(mic_track, s.clock, s.on_frame, s.on_tick, s.mic.next_deadline))
        ended = asyncio.create_task(s.wait_for(lambda: s.core.finished))
        await asyncio.wait((mic, ended), return_when=asyncio.FIRST_COMPLETED)
        for task in (mic, ended):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await mic  # an exception from the mic side (recording, pipeline) is the session's error
        s.handle_outputs(s.mic.finish(s.clock()))
        s.act(s.core.input_done(s.clock()))
        if not s.core.finished:
            s.progress("waiting for the last answer")
            await s.wait_for(lambda: s.core.finished)
        if s.core.gave_up is not None:
            raise GaveUp(f"gave up ({s.core.gave_up.reason}): {s.core.gave_up.detail}")
        s.writer.stop()
        await asyncio.wait_for(writer_task, 5.0)
        rec.emit(SessionMark(t=s.clock(), what="end"))
    except Exception as exc:  # recorded, then reported in one line by the caller
        error = str(exc) if isinstance(exc, GaveUp) else _one_line(exc)
        rec.emit(Error(t=s.clock(), where="session", message=error))
    finally:
        for task in [s.connecting, *s.tools.values()]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        await s.close_connection()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if link is not None:
            await link.close()
        gave_up = None if s.core.gave_up is None else {"reason": s.core.gave_up.reason,
                                                        "detail": s.core.gave_up.detail}
        unanswered = len(s.core.ledger.unanswered())
        rec.close(activities=s.mic.order.activities, turn_completes=s.turn_completes, error=error,
                  unanswered=unanswered, reconnects=s.core.reconnects, gave_up=gave_up)
    return SessionResult(path=rec.dir, activities=s.mic.order.activities, answered=s.turn_completes, error=error,
                         unanswered=unanswered, reconnects=s.core.reconnects, gave_up=gave_up)


class GaveUp(Exception):
    """The client core gave up (its ``GiveUp``): the session's one-line error."""


def _close_code(exc: BaseException) -> int | None:
    """The close code a failed connect got from the server (websockets' ConnectionClosed), if any."""
    for e in (exc, exc.__cause__, exc.__context__):
        rcvd = getattr(e, "rcvd", None)
        if rcvd is not None and getattr(rcvd, "code", None) is not None:
            return int(rcvd.code)
        code = getattr(e, "code", None)
        if isinstance(code, int) and 1000 <= code < 5000:
            return code
    return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]
