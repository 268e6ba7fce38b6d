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

from . import live
from .events import Error, Event, LoopLag, SessionMark
from .pipeline import MicPipeline
from .recording import Recorder
from .sender import Outgoing
from .turns import TurnParams
from .webrtc import FilePlayerTrack, Received, Tick, ingest, loopback
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
    response_timeout_s: float = 10.0  # after the last ActivityEnd, how long to wait for its turn_complete
    name: str = "session"
    source: str = ""


@dataclass
class SessionResult:
    path: Path
    activities: int
    answered: int
    error: str | None = None


class _Session:
    """State of one running session; methods are the bridge's stages."""

    def __init__(self, cfg: SessionConfig, recorder: Recorder, progress: Callable[[str], None] | None) -> None:
        self.cfg = cfg
        self.rec = recorder
        self.progress = progress or (lambda _msg: None)
        self.t0 = time.monotonic()
        self.mic = MicPipeline(cfg.params)
        self.writer: live.Writer | None = None
        self.turn_completes = 0
        self.greeting_done = asyncio.Event()
        self.answered = asyncio.Event()
        self.ends_sent = 0

    def clock(self) -> float:
        return time.monotonic() - self.t0

    def emit(self, event: Event) -> None:
        self.rec.emit(event)

    # -- server side -------------------------------------------------------
    def on_server(self, msg: types.LiveServerMessage) -> None:
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
            self.greeting_done.set()
            self.answered.set()
        if msg.tool_call is not None and self.writer is not None:
            replies = [
                types.FunctionResponse(id=fc.id, name=fc.name, response={"ok": True})
                for fc in msg.tool_call.function_calls or []
            ]
            self.writer.put(live.ToolReply(replies))

    # -- mic side ----------------------------------------------------------
    def handle(self, outputs: list[Event | Outgoing]) -> None:
        """Events go to the recorder, messages to the one writer, in the order the pipeline made them."""
        assert self.writer is not None
        for o in outputs:
            if isinstance(o, Outgoing):
                if o.msg == "activity_end":
                    self.ends_sent += 1
                    self.answered.clear()
                self.writer.put(o)
            else:
                self.rec.emit(o)

    def on_frame(self, item: Received) -> None:
        self.rec.mic(item.t, int(round(item.pts_s * 48_000)), item.samples)
        self.handle(self.mic.frame(item.t, item.pts_s, item.samples))

    async def sample_loop_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + LOOP_LAG_PERIOD_S
            await asyncio.sleep(LOOP_LAG_PERIOD_S)
            self.emit(LoopLag(t=self.clock(), lag_ms=round((loop.time() - due) * 1000.0, 3)))


async def run_session(
    source: np.ndarray | MediaStreamTrack,
    cfg: SessionConfig,
    out_dir: str | Path,
    progress: Callable[[str], None] | None = None,
) -> SessionResult:
    """Bridge one microphone into a Live session, recording everything.

    ``source`` is either int16 mono 48 kHz audio, played through a loopback WebRTC link by a
    ``FilePlayerTrack``, or a received WebRTC audio track (a browser's), consumed until it ends.
    """
    audio_48k = source if isinstance(source, np.ndarray) else None
    meta: dict[str, Any] = {
        "name": cfg.name,
        "source": cfg.source,
        "params": cfg.params.to_dict(),
        "live": cfg.live.describe(),
        "dtx": cfg.dtx,
        "tail_s": cfg.tail_s,
        "audio_s": None if audio_48k is None else round(audio_48k.size / 48_000, 3),
    }
    rec = Recorder(out_dir, meta)
    s = _Session(cfg, rec, progress)
    rec.meta["t0_monotonic"] = s.t0
    rec.emit(SessionMark(t=0.0, what="start", detail=cfg.name))
    error: str | None = None
    tasks: list[asyncio.Task[Any]] = [asyncio.create_task(s.sample_loop_lag())]
    link = None
    try:
        client = live.make_client(cfg.live, create_connection=tapped_connection(rec.emit, s.clock))
        s.progress("connecting")
        async with client.aio.live.connect(model=cfg.live.model, config=live.connect_config(cfg.live)) as session:
            rec.emit(SessionMark(t=s.clock(), what="setup_complete"))
            s.writer = live.Writer(session, rec.emit, s.clock, on_audio=rec.sent)
            tasks.append(asyncio.create_task(s.writer.run()))
            receiver = asyncio.create_task(live.receive_forever(session, s.on_server))
            tasks.append(receiver)
            if cfg.live.greeting_prompt:
                s.progress("waiting for the greeting")
                s.writer.put(live.TextTurn(cfg.live.greeting_prompt))
                await _wait_or_fail(s.greeting_done.wait(), cfg.greeting_timeout_s, receiver)
            rec.emit(SessionMark(t=s.clock(), what="mic_open"))
            s.progress("playing the microphone")
            if audio_48k is not None:
                link = await loopback(FilePlayerTrack(audio_48k, dtx=cfg.dtx, tail_s=cfg.tail_s))
                mic_track: MediaStreamTrack = link.remote_track
            else:
                assert isinstance(source, MediaStreamTrack)
                mic_track = source
            async for item in ingest(mic_track, s.clock):
                if receiver.done():
                    break
                if isinstance(item, Received):
                    s.on_frame(item)
                elif isinstance(item, Tick):
                    s.handle(s.mic.tick(item.t))
            s.handle(s.mic.finish(s.clock()))
            if receiver.done():
                receiver.result()  # re-raise why the session ended
            if s.ends_sent:
                s.progress("waiting for the last answer")
                await _wait_or_fail(s.answered.wait(), cfg.response_timeout_s, receiver)
            s.writer.stop()
            await asyncio.wait_for(tasks[1], 5.0)
            rec.emit(SessionMark(t=s.clock(), what="end"))
    except Exception as exc:  # recorded, then reported in one line by the caller
        error = _one_line(exc)
        rec.emit(Error(t=s.clock(), where="session", message=error))
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if link is not None:
            await link.close()
        rec.close(activities=s.mic.order.activities, turn_completes=s.turn_completes, error=error)
    return SessionResult(path=rec.dir, activities=s.mic.order.activities, answered=s.turn_completes, error=error)


async def _wait_or_fail(awaitable: Any, timeout_s: float, receiver: asyncio.Task[Any]) -> None:
    """Wait for a server milestone, but stop at once if the receive loop died."""
    waiter = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({waiter, receiver}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
    if receiver in done:
        receiver.result()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]
