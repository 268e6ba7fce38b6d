"""The emulator's asyncio shell: a TLS websocket server that moves JSON between sockets and ``SessionCore``."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidState
from websockets.frames import Frame, Opcode

from workbench.emulator.certs import client_context, make_cert, server_context
from workbench.emulator.core import (
    Action,
    Close,
    Conversation,
    EmulatorConfig,
    LogEntry,
    PauseReading,
    SendJson,
    SendPong,
    SessionCore,
    Violation,
)

TICK_S = 0.01  # the longest a due message waits for the timer


class _Connection(ServerConnection):
    """websockets' server connection, with pings handed to ``on_ping`` instead of answered at once.

    websockets' protocol layer answers a ping inside ``Protocol.recv_frame`` (RFC 6455 5.5.2); the real
    service's pongs came 8-30 s late (aicc2025/sip-to-ai PR #14), so the core decides when a pong goes out.
    """

    def __init__(self, protocol: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(protocol, *args, **kwargs)
        self.on_ping: Callable[[bytes], None] | None = None
        self.on_close_frame: Callable[[str], None] | None = None
        answer_at_once = protocol.recv_frame

        def recv_frame(frame: Frame) -> None:
            if frame.opcode is Opcode.PING and self.on_ping is not None:
                self.on_ping(bytes(frame.data))
                return
            answer_at_once(frame)
            if frame.opcode is Opcode.CLOSE and self.on_close_frame is not None:
                # the client closed: its conversation has no open connection from this moment, so a resume
                # that follows at once is not rejected as "while open" by a race with our own teardown
                rcvd = protocol.close_rcvd
                self.on_close_frame(f"{rcvd.code} {rcvd.reason}".strip() if rcvd is not None else "close frame")

        protocol.recv_frame = recv_frame


class Emulator:
    """A Live API endpoint on 127.0.0.1 for the unmodified google-genai SDK (``base_url``).

    ``async with Emulator(config) as emu:`` serves until the block ends.  ``log`` and
    ``violations`` gather every connection's entries, with ``time.monotonic()`` times.
    Conversations (kept across connections by resumption handles) live here, not in a connection.
    """

    def __init__(self, config: EmulatorConfig | None = None, port: int = 0, host: str = "127.0.0.1",
                 cert_dir: str | Path | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.host = host
        self.port = port
        self._own_cert_dir = cert_dir is None
        self.cert_path, self.key_path = make_cert(cert_dir)
        self.cores: list[SessionCore] = []
        self.conversations: dict[str, Conversation] = {}
        self.all_conversations: list[Conversation] = []
        self._conv_ids = itertools.count(1)
        self._conn_ids = itertools.count(0)
        self._server: Server | None = None
        self._shells: set[_Shell] = set()

    @property
    def base_url(self) -> str:
        """What to give ``HttpOptions(base_url=...)``."""
        return f"https://{self.host}:{self.port}"

    def client_ssl_context(self) -> ssl.SSLContext:
        """An SSL context that trusts this emulator's certificate (``async_client_args={"ssl": ...}``)."""
        return client_context(self.cert_path)

    @property
    def log(self) -> list[LogEntry]:
        return sorted((e for c in self.cores for e in c.log), key=lambda e: e.t_mono)

    @property
    def violations(self) -> list[Violation]:
        """Every connection's violations, plus ``lost_turn`` of conversations whose connections have all closed."""
        found = [v for c in self.cores for v in c.violations]
        if self.config.flag_turns:
            found += [v for conv in self.all_conversations for v in conv.lost_turns()]
        return sorted(found, key=lambda v: v.t_mono)

    @property
    def turns_answered(self) -> int:
        """Model turns that reached turnComplete, over all connections (the greeting included; an interrupted
        or empty turnComplete does not count)."""
        return sum(1 for c in self.cores for e in c.log if e.kind == "turn_complete" and e.detail is None)

    def write_log(self, recording_dir: str | Path) -> Path:
        """Keep the server's own view (what it received, violations) beside a recording, on its clock."""
        out = Path(recording_dir)
        t0 = json.loads((out / "session.json").read_text()).get("t0_monotonic", 0.0)
        path = out / "emulator.jsonl"
        with open(path, "w") as fh:
            for e in self.log:
                fh.write(json.dumps({"t": round(e.t_mono - t0, 6), "conn": e.conn, "direction": e.direction,
                                     "kind": e.kind, "n_bytes": e.n_bytes, "detail": e.detail}) + "\n")
            for v in self.violations:
                fh.write(json.dumps({"t": round(v.t_mono - t0, 6), "conn": v.conn, "direction": "violation",
                                     "kind": v.rule, "detail": v.detail}) + "\n")
        return path

    def _new_conversation(self) -> Conversation:
        conv = Conversation(id=next(self._conv_ids))
        self.all_conversations.append(conv)
        return conv

    async def __aenter__(self) -> Emulator:
        try:
            self._server = await serve(
                self._handle, self.host, self.port, ssl=server_context(self.cert_path, self.key_path),
                ping_interval=None, max_size=None, compression=None, close_timeout=2.0, create_connection=_Connection,
            )
        except BaseException:
            # e.g. the port is taken: the private key's temporary directory must not outlive us
            if self._own_cert_dir:
                shutil.rmtree(self.cert_path.parent, ignore_errors=True)
            raise
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for shell in list(self._shells):
            shell.wake.set()  # end stalls, so closing does not wait for them
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)
        if self._own_cert_dir:
            shutil.rmtree(self.cert_path.parent, ignore_errors=True)

    async def _handle(self, ws: _Connection) -> None:  # serve(create_connection=_Connection)
        conn = next(self._conn_ids)
        faults = [f for f in self.config.faults if f.every_connection or conn == 0]
        core = SessionCore(self.config, conn, self.conversations, self._new_conversation, faults)
        self.cores.append(core)
        # Whether the client sent an API key (header or ?key=), never the key: a bridge must not hand the user's
        # GEMINI_API_KEY to an endpoint that is not Google's unless told to (tests/test_security.py).
        req = ws.request
        sent_key = req is not None and bool(req.headers.get("x-goog-api-key")
                                            or parse_qs(urlsplit(req.path).query).get("key"))
        core.log.append(LogEntry(time.monotonic(), conn, "in", "api_key", 0, "present" if sent_key else "absent"))
        shell = _Shell(ws, core)
        self._shells.add(shell)
        ws.on_ping = shell.on_ping
        ws.on_close_frame = lambda detail: core.connection_lost(time.monotonic(), detail)
        ticker = asyncio.create_task(shell.tick_loop())
        try:
            await shell.receive_loop()
        finally:
            self._shells.discard(shell)
            ws.on_ping = ws.on_close_frame = None
            ticker.cancel()
            with contextlib.suppress(BaseException):
                await ticker
            core.connection_lost(time.monotonic(), f"{ws.close_code} {ws.close_reason or ''}".strip())


class _Shell:
    """Moves one connection's messages between the socket and its core."""

    def __init__(self, ws: ServerConnection, core: SessionCore) -> None:
        self.ws = ws
        self.core = core
        self.resume_at: float | None = None
        self.wake = asyncio.Event()

    def on_ping(self, data: bytes) -> None:
        """Called inside websockets' data_received: a pong due now is queued to go out with its flush."""
        for a in self.core.ping(time.monotonic(), data):
            if isinstance(a, SendPong):
                with contextlib.suppress(InvalidState):  # a ping that raced our close
                    self.ws.protocol.send_pong(a.data)

    async def receive_loop(self) -> None:
        while True:
            if self.resume_at is not None:
                # not consuming the queue too, so websockets' own flow control cannot resume reading for us
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), max(0.0, self.resume_at - time.monotonic()))
                self.resume_at = None
                if not self.ws.recv_messages.paused:
                    with contextlib.suppress(Exception):
                        self.ws.transport.resume_reading()
            try:
                raw = await self.ws.recv()
            except ConnectionClosed:
                return
            try:
                msg = json.loads(raw)
            except (ValueError, RecursionError):  # not JSON, or nested too deep to parse
                msg = None
            if not await self.act(self.core.receive(time.monotonic(), msg)):
                return

    async def tick_loop(self) -> None:
        while True:
            due = self.core.next_due()
            now = time.monotonic()
            await asyncio.sleep(TICK_S if due is None else min(TICK_S, max(0.0, due - now)))
            if not await self.act(self.core.tick(time.monotonic())):
                return

    async def act(self, actions: list[Action]) -> bool:
        """Carry out the core's actions; False once the connection is being closed."""
        for a in actions:
            if isinstance(a, SendJson):
                try:
                    await self.ws.send(json.dumps(a.payload))
                except ConnectionClosed:
                    return False
            elif isinstance(a, SendPong):
                try:
                    await self.ws.pong(a.data)
                except ConnectionClosed:
                    return False
            elif isinstance(a, Close):
                with contextlib.suppress(Exception):
                    await self.ws.close(a.code, a.reason)
                return False
            elif isinstance(a, PauseReading):
                self.ws.transport.pause_reading()
                self.resume_at = a.until_t
        return True
