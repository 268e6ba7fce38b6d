"""The wire tap over real websockets connections on loopback: who closed, pings and pongs per connection."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from workbench.core.events import Event, Ws
from workbench.io.wiretap import tapped_connection


async def _session(server_side: Any, client_side: Any, **client_kw: Any) -> list[Event]:
    """Serve ``server_side(ws)`` on loopback, run ``client_side(ws)`` through the tap, return what it recorded."""
    events: list[Event] = []
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def handler(ws: ServerConnection) -> None:
        await server_side(ws)

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        tapped = tapped_connection(events.append, lambda: loop.time() - t0)
        async with connect(f"ws://127.0.0.1:{port}", create_connection=tapped, close_timeout=1.0,
                           **client_kw) as ws:
            with pytest.raises(ConnectionClosed) if client_kw.get("ping_timeout") else contextlib.nullcontext():
                await client_side(ws)
    return events


def _closes(events: list[Event]) -> list[Ws]:
    return [e for e in events if isinstance(e, Ws) and e.what == "close"]


async def _wait_closed(ws: ServerConnection) -> None:
    await ws.wait_closed()


def test_client_close_echoed_by_server_is_the_clients():
    async def client(ws: Any) -> None:
        await ws.send("hello")
        await ws.close(1011, "keepalive ping timeout")

    events = asyncio.run(_session(_wait_closed, client))
    (c,) = _closes(events)
    # a close frame was received (the server's echo), yet the client closed first
    assert any(isinstance(e, Ws) and e.what == "close_frame_received" for e in events)
    assert c.closed_by == "client" and c.code == 1011 and c.reason == "keepalive ping timeout"
    assert "from server" not in (c.detail or "") and c.conn == 1


def test_server_close_is_the_servers():
    async def server(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.close(1011, "Internal error encountered.")

    async def client(ws: Any) -> None:
        await ws.send("hello")
        await ws.wait_closed()

    (c,) = _closes(asyncio.run(_session(server, client)))
    assert c.closed_by == "server" and c.code == 1011 and c.reason == "Internal error encountered."
    assert "close frame from server" in (c.detail or "")


def test_keepalive_timeout_against_a_server_that_stops_reading():
    """websockets' own keepalive fails the connection: a client close, with the unanswered ping on record."""

    async def server(ws: ServerConnection) -> None:
        ws.transport.pause_reading()  # pings go unread: no pong
        await asyncio.sleep(1.5)
        ws.transport.resume_reading()
        await ws.wait_closed()

    async def client(ws: Any) -> None:
        while True:
            await ws.recv()

    events = asyncio.run(_session(server, client, ping_interval=0.2, ping_timeout=0.3))
    (c,) = _closes(events)
    assert c.closed_by == "client" and c.code == 1011 and "keepalive" in (c.reason or "")
    pings = [e for e in events if isinstance(e, Ws) and e.what == "ping"]
    assert pings and all(p.conn == 1 for p in pings)
    last = pings[-1]
    assert not [e for e in events if isinstance(e, Ws) and e.what == "pong" and e.t >= last.t]


def test_pongs_carry_their_connection_and_latency():
    async def client(ws: Any) -> None:
        waiter = await ws.ping()
        await waiter
        await ws.close()

    events = asyncio.run(_session(_wait_closed, client))
    (pong,) = [e for e in events if isinstance(e, Ws) and e.what == "pong"]
    assert pong.conn == 1 and pong.latency_ms is not None and pong.latency_ms >= 0
    (c,) = _closes(events)
    assert c.code == 1000 and c.closed_by == "client"
