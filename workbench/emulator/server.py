"""The emulator's asyncio shell: a TLS websocket server that moves JSON between sockets and ``SessionCore``."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import ssl
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from .certs import client_context, make_cert, server_context
from .core import Close, Conversation, EmulatorConfig, LogEntry, PauseReading, SendJson, SessionCore, Violation

TICK_S = 0.01


class Emulator:
    """A Live API endpoint on 127.0.0.1 for the unmodified google-genai SDK (``base_url``).

    ``async with Emulator(config) as emu:`` serves until the block ends.  ``log`` and
    ``violations`` gather every connection's entries, with ``time.monotonic()`` times.
    """

    def __init__(self, config: EmulatorConfig | None = None, port: int = 0, host: str = "127.0.0.1",
                 cert_dir: str | Path | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.host = host
        self.port = port
        self.cert_path, self.key_path = make_cert(cert_dir)
        self.cores: list[SessionCore] = []
        self.conversations: dict[str, Conversation] = {}
        self._conv_ids = itertools.count(1)
        self._conn_ids = itertools.count(0)
        self._server: Any = None

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def client_ssl_context(self) -> ssl.SSLContext:
        return client_context(self.cert_path)

    @property
    def log(self) -> list[LogEntry]:
        return sorted((e for c in self.cores for e in c.log), key=lambda e: e.t_mono)

    @property
    def violations(self) -> list[Violation]:
        return sorted((v for c in self.cores for v in c.violations), key=lambda v: v.t_mono)

    @property
    def turns_answered(self) -> int:
        return sum(1 for e in self.log if e.kind == "turn_complete")

    def _new_conversation(self) -> Conversation:
        return Conversation(id=next(self._conv_ids))

    async def __aenter__(self) -> Emulator:
        self._server = await serve(
            self._handle, self.host, self.port, ssl=server_context(self.cert_path, self.key_path),
            ping_interval=None, max_size=None, compression=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5.0)

    async def serve_forever(self) -> None:
        async with self:
            await asyncio.Future()

    async def _handle(self, ws: ServerConnection) -> None:
        conn = next(self._conn_ids)
        faults = [f for f in self.config.faults if f.every_connection or conn == 0]
        core = SessionCore(self.config, conn, self.conversations, self._new_conversation,
                           faults[0] if faults else None)
        self.cores.append(core)
        ticker = asyncio.create_task(self._tick(ws, core))
        try:
            async for raw in ws:
                try:
                    msg = json.loads(raw)
                except ValueError:
                    msg = None
                if not await self._act(ws, core, core.receive(time.monotonic(), msg)):
                    break
        except ConnectionClosed:
            pass
        finally:
            ticker.cancel()
            with contextlib.suppress(BaseException):
                await ticker
            if not core.closed:
                code = ws.close_code
                core.closed = True
                core.log.append(LogEntry(time.monotonic(), conn, "in", "client_closed", 0,
                                         f"{code} {ws.close_reason or ''}".strip()))

    async def _tick(self, ws: ServerConnection, core: SessionCore) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            if not await self._act(ws, core, core.tick(time.monotonic())):
                return

    async def _act(self, ws: ServerConnection, core: SessionCore, actions: list[Any]) -> bool:
        """Carry out the core's actions; False once the connection is being closed."""
        for a in actions:
            if isinstance(a, SendJson):
                try:
                    await ws.send(json.dumps(a.payload))
                except ConnectionClosed:
                    return False
            elif isinstance(a, Close):
                await ws.close(a.code, a.reason)
                return False
            elif isinstance(a, PauseReading):
                ws.transport.pause_reading()
                asyncio.get_running_loop().call_later(a.seconds, _resume, ws)
        return True


def _resume(ws: ServerConnection) -> None:
    with contextlib.suppress(Exception):
        ws.transport.resume_reading()
