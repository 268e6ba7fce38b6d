"""The full bridge for one session: mic track -> ingest -> resample -> turn detector -> writer -> Live.

This is the asyncio shell.  The decisions are made by sans-I/O cores (``TurnDetector``,
``SendOrder``); this module moves frames and messages between them, the WebRTC track, the
Live session and the recorder, and keeps the clock running while ``track.recv()`` waits.
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

from . import live, naive
from .eventloop import running_loop_name
from .events import Error, Event, LoopLag, SessionMark, Watchdog, Ws
from .ingest import Received, ingest
from .ledger import TurnLedger
from .pipeline import SEND_CHUNK_MS, MicPipeline
from .recording import Observer, Recorder
from .sender import Outgoing
from .turns import TurnParams
from .webrtc import FilePlayerTrack, loopback
from .wiretap import tapped_connection

LOOP_LAG_PERIOD_S = 0.1


@dataclass
class SessionConfig:
    """Everything one session needs besides its audio; recorded in session.json."""

    params: TurnParams = field(default_factory=TurnParams)
    live: live.LiveSettings = field(default_factory=live.LiveSettings)
    dtx: bool = False
    tail_s: float = 1.5  # digital silence played after the source, so the last turn can end on the clock
    greeting_timeout_s: float = 15.0
    response_timeout_s: float = 10.0  # after the last ActivityEnd (or reconnect), how long to wait for answers
    reconnect: bool = True  # on 1011 / 1006 / goAway / watchdog: resume with the latest handle, re-send turns
    reconnect_attempts: int = 3
    watchdog_s: float | None = 5.0  # no response this long after ActivityEnd: Watchdog event and its action
    watchdog_action: str = "reconnect"  # "reconnect" (resume and re-send the turn) or "none" (record only)
    naive: str | None = None  # one of naive.MODES: reproduce a field-report mistake
    send_chunk_ms: float = SEND_CHUNK_MS  # audio per message at least this long (ActivityEnd flushes it first)
    name: str = "session"
    source: str = ""

    def __post_init__(self) -> None:
        naive.check_mode(self.naive)
        if self.watchdog_action not in WATCHDOG_ACTIONS:
            raise ValueError(f"watchdog action must be one of {', '.join(WATCHDOG_ACTIONS)}, "
                             f"not {self.watchdog_action!r}")
        if not self.send_chunk_ms >= 0:
            raise ValueError(f"send chunk must be >= 0 ms, got {self.send_chunk_ms}")
        if self.watchdog_s is not None and not self.watchdog_s > 0:
            raise ValueError(f"watchdog must be > 0 s (or None for off), got {self.watchdog_s}")

    def describe(self) -> dict[str, Any]:
        return {"reconnect": self.reconnect, "watchdog_s": self.watchdog_s, "watchdog_action": self.watchdog_action,
                "naive": self.naive, "response_timeout_s": self.response_timeout_s,
                "send_chunk_ms": self.send_chunk_ms}


WATCHDOG_ACTIONS = ("reconnect", "none")


@dataclass
class SessionResult:
    path: Path
    activities: int
    answered: int  # turn_completes, the greeting's included
    error: str | None = None
    unanswered: int = 0  # closed turns (greeting included) that never got their turn_complete
    reconnects: int = 0


class _Session:
    """State of one running session; methods are the bridge's stages.

    The connection is replaceable: ``lost`` (from the receive loop, the writer, a goAway or the
    watchdog) starts ``reconnect``, which closes the old socket, resumes with the latest handle and
    re-attaches the one writer with the ledger's unanswered turns first.  The mic side never waits
    for any of it: its messages queue up meanwhile and the ledger keeps them.
    """

    def __init__(self, cfg: SessionConfig, recorder: Recorder, progress: Callable[[str], None] | None) -> None:
        self.cfg = cfg
        self.rec = recorder
        self.progress = progress or (lambda _msg: None)
        self.t0 = time.monotonic()
        self.mic = MicPipeline(cfg.params, send_chunk_ms=cfg.send_chunk_ms)
        if cfg.naive == "frame-count":
            self.mic.detector = naive.FrameCountDetector(cfg.params)  # type: ignore[assignment]
        self.ledger = TurnLedger(cfg.watchdog_s)
        writer_cls = naive.TwoTaskWriter if cfg.naive == "two-tasks" else live.Writer
        self.writer = writer_cls(None, recorder.emit, self.clock, on_audio=recorder.sent, on_lost=self.on_writer_lost)
        self.receive = naive.receive_once if cfg.naive == "receive-once" else live.receive_forever
        self.client: Any = None
        self.conn = 0
        self.handle: str | None = None
        self.stack: contextlib.AsyncExitStack | None = None
        self.receiver: asyncio.Task[None] | None = None
        self.reconnecting: asyncio.Task[None] | None = None
        self.reconnects = 0
        self.last_reconnect_t = 0.0
        self.mic_done_t = 0.0
        self.turn_completes = 0
        self.greeting_done = asyncio.Event()
        self.settled = asyncio.Event()  # no closed turn waits for an answer
        self.dead = asyncio.Event()  # the connection is gone for good
        self.why_dead: str | None = None

    def clock(self) -> float:
        return time.monotonic() - self.t0

    def emit(self, event: Event) -> None:
        self.rec.emit(event)

    # -- connection --------------------------------------------------------
    async def connect(self) -> None:
        """Open connection ``conn + 1`` (resuming with ``handle`` if any) and attach the writer to it."""
        self.conn += 1
        stack = contextlib.AsyncExitStack()
        config = live.connect_config(self.cfg.live, resume_handle=self.handle)
        try:
            session = await stack.enter_async_context(
                self.client.aio.live.connect(model=self.cfg.live.model, config=config))
        except BaseException:
            await stack.aclose()
            raise
        self.stack = stack
        resumed = f", resumed with handle {self.handle}" if self.handle else ""
        self.emit(Ws(t=self.clock(), what="connect", detail=f"conn {self.conn}{resumed}"))
        self.emit(SessionMark(t=self.clock(), what="setup_complete", detail=f"conn {self.conn}"))
        first = self.ledger.reconnected(self.clock()) if self.conn > 1 else []
        if first:
            turns = sorted({t.n for t in self.ledger.turns})
            self.emit(SessionMark(t=self.clock(), what="resend",
                                  detail=f"conn {self.conn}: {len(first)} message(s) of unanswered turn(s) {turns}"))
        self.receiver = asyncio.create_task(self._receive(session, self.conn))
        self.writer.attach(session, first)

    async def _receive(self, session: Any, conn: int) -> None:
        try:
            await self.receive(session, self.on_server)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.lost(conn, f"receive loop: {_one_line(exc)}")
        # receive_forever only returns by raising; naive.receive_once returns after the first
        # turn_complete and from then on nobody reads this connection.

    async def close_connection(self) -> None:
        """Close the current socket first (a resume while it is open may be rejected), never mid-send."""
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
        self.lost(conn, f"send failed: {_one_line(exc)}")

    def lost(self, conn: int, why: str) -> None:
        """Connection ``conn`` is gone or must go: reconnect once, or give up when that is switched off."""
        if conn != self.conn or self.reconnecting is not None or self.dead.is_set():
            return
        if not self.cfg.reconnect:
            self.why_dead = why
            self.dead.set()
            return
        self.writer.detach()
        self.reconnecting = asyncio.create_task(self.reconnect(why))

    async def reconnect(self, why: str) -> None:
        self.reconnects += 1
        self.emit(Ws(t=self.clock(), what="reconnect", detail=f"conn {self.conn}: {why}"))
        self.progress(f"reconnecting ({why})")
        await self.close_connection()
        for attempt in range(1, self.cfg.reconnect_attempts + 1):
            try:
                await self.connect()
                break
            except Exception as exc:
                self.emit(Error(t=self.clock(), where="reconnect", message=f"attempt {attempt}: {_one_line(exc)}"))
                await asyncio.sleep(0.2 * attempt)
        else:
            self.why_dead = f"could not reconnect after {why}"
            self.dead.set()
        self.last_reconnect_t = self.clock()
        self.reconnecting = None

    # -- server side -------------------------------------------------------
    def on_server(self, msg: types.LiveServerMessage) -> None:
        t = self.clock()
        for ev in live.server_events(msg, t):
            self.emit(ev)
            self.ledger.server(ev.msg, t)
        if self.ledger.pending == 0:
            self.settled.set()
        sc = msg.server_content
        if sc is not None and sc.model_turn and sc.model_turn.parts:
            for part in sc.model_turn.parts:
                if part.inline_data and part.inline_data.data:
                    self.rec.model(np.frombuffer(part.inline_data.data, dtype="<i2"))
        if sc is not None and sc.turn_complete:
            self.turn_completes += 1
            self.greeting_done.set()
        u = msg.session_resumption_update
        if u is not None and u.new_handle and u.resumable is not False:
            self.handle = u.new_handle
        if msg.go_away is not None and self.cfg.reconnect:  # without reconnecting, ride it out until the close
            self.lost(self.conn, f"goAway (time left {msg.go_away.time_left})")
        if msg.tool_call is not None:
            replies = [
                types.FunctionResponse(id=fc.id, name=fc.name, response={"ok": True})
                for fc in msg.tool_call.function_calls or []
            ]
            self.writer.put(live.ToolReply(replies))

    # -- mic side ----------------------------------------------------------
    def send(self, item: live.WriterItem) -> None:
        """Into the ledger (for re-sending) and the one writer, in order."""
        self.ledger.sent(item, self.clock())
        if self.ledger.pending:
            self.settled.clear()
        self.writer.put(item)

    def handle_outputs(self, outputs: list[Event | Outgoing]) -> None:
        """Events go to the recorder, messages to the one writer, in the order the pipeline made them."""
        for o in outputs:
            if isinstance(o, Outgoing):
                self.send(o)
            else:
                self.rec.emit(o)

    def on_frame(self, item: Received) -> None:
        self.rec.mic(item.t, int(round(item.pts_s * 48_000)), item.samples)
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
            self.check_watchdog(t)

    def check_watchdog(self, t: float) -> None:
        if self.reconnecting is not None or self.dead.is_set():
            return
        due = self.ledger.watchdog(t)
        if due is None:
            return
        turn, waited_s = due
        what = "greeting" if turn.n == 0 else f"turn {turn.n}"
        action = (f"reconnect and re-send {what}" if self.cfg.watchdog_action == "reconnect" and self.cfg.reconnect
                  else "none (recorded only)")
        self.emit(Watchdog(t=t, after_s=round(waited_s, 3), action=action))
        if action.startswith("reconnect"):
            self.lost(self.conn, f"watchdog: no response to {what} for {waited_s:.1f} s")

    async def wait_settled(self) -> None:
        """Wait for every closed turn's answer; a reconnect restarts the response timeout."""
        while not (self.settled.is_set() or self.dead.is_set()):
            since = self.clock() - max(self.mic_done_t, self.last_reconnect_t)
            if self.reconnecting is None and since > self.cfg.response_timeout_s:
                return
            await asyncio.sleep(0.05)


async def run_session(
    source: np.ndarray | MediaStreamTrack,
    cfg: SessionConfig,
    out_dir: str | Path,
    progress: Callable[[str], None] | None = None,
    observer: Observer | None = None,
) -> SessionResult:
    """Bridge one microphone into a Live session, recording everything (``observer`` sees it too).

    ``source`` is either int16 mono 48 kHz audio, played through a loopback WebRTC link by a
    ``FilePlayerTrack``, or a received WebRTC audio track (a browser's), consumed until it ends.
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
        "audio_s": None if audio_48k is None else round(audio_48k.size / 48_000, 3),
        "event_loop": running_loop_name(),
    }
    rec = Recorder(out_dir, meta, observer=observer)
    s = _Session(cfg, rec, progress)
    rec.meta["t0_monotonic"] = s.t0
    rec.emit(SessionMark(t=0.0, what="start", detail=cfg.name + (f" (naive: {cfg.naive})" if cfg.naive else "")))
    error: str | None = None
    tasks: list[asyncio.Task[Any]] = [asyncio.create_task(s.sample_loop_lag())]
    link = None
    try:
        # On a thread: building the SDK client loads the CA bundle into ~3 SSL contexts, ~60 ms that would
        # stall every other session on this loop (OpenSSL releases the GIL meanwhile).
        s.client = await asyncio.to_thread(
            live.make_client, cfg.live, create_connection=tapped_connection(rec.emit, s.clock))
        s.progress("connecting")
        await s.connect()
        writer_task = asyncio.create_task(s.writer.run())
        tasks.append(writer_task)
        if cfg.live.greeting_prompt:
            s.progress("waiting for the greeting")
            s.send(live.TextTurn(cfg.live.greeting_prompt))
            await _wait_or_dead(s, s.greeting_done, cfg.greeting_timeout_s)
        rec.emit(SessionMark(t=s.clock(), what="mic_open"))
        s.progress("playing the microphone")
        if audio_48k is not None:
            link = await loopback(FilePlayerTrack(audio_48k, dtx=cfg.dtx, tail_s=cfg.tail_s))
            mic_track: MediaStreamTrack = link.remote_track
        else:
            assert isinstance(source, MediaStreamTrack)
            mic_track = source
        mic = asyncio.create_task(ingest(mic_track, s.clock, s.on_frame, s.on_tick, s.mic.next_deadline))
        dead = asyncio.create_task(s.dead.wait())
        await asyncio.wait((mic, dead), return_when=asyncio.FIRST_COMPLETED)
        for task in (mic, dead):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await mic  # an exception from the mic side (recording, pipeline) is the session's error
        s.handle_outputs(s.mic.finish(s.clock()))
        s.mic_done_t = s.clock()
        if not s.dead.is_set() and s.ledger.pending:
            s.progress("waiting for the last answer")
            await s.wait_settled()
        if s.dead.is_set():
            raise ConnectionError(s.why_dead or "connection lost")
        s.writer.stop()
        await asyncio.wait_for(writer_task, 5.0)
        rec.emit(SessionMark(t=s.clock(), what="end"))
    except Exception as exc:  # recorded, then reported in one line by the caller
        error = _one_line(exc)
        rec.emit(Error(t=s.clock(), where="session", message=error))
    finally:
        if s.reconnecting is not None:
            s.reconnecting.cancel()
            with contextlib.suppress(BaseException):
                await s.reconnecting
        await s.close_connection()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if link is not None:
            await link.close()
        rec.close(activities=s.mic.order.activities, turn_completes=s.turn_completes, error=error,
                  unanswered=len(s.ledger.turns), reconnects=s.reconnects)
    return SessionResult(path=rec.dir, activities=s.mic.order.activities, answered=s.turn_completes, error=error,
                         unanswered=len(s.ledger.turns), reconnects=s.reconnects)


async def _wait_or_dead(s: _Session, event: asyncio.Event, timeout_s: float) -> None:
    """Wait for a server milestone, but stop at once if the connection is gone for good."""
    waiters = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(s.dead.wait())}
    await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()
    if s.dead.is_set():
        raise ConnectionError(s.why_dead or "connection lost")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]
