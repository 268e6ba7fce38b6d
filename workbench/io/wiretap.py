"""What really crossed the socket: a websockets connection class that reports its frames.

The SDK opens its websocket with ``websockets.asyncio.client.connect(uri, **async_client_args)``
and passes ``create_connection`` through, so the bridge hands it a subclass that reports
every text frame it writes, every frame it reads off the socket, pings, pongs and the close.
This is the wire-level evidence: the order here is the order the server saw, and the read
times show when the socket was read, not when the application got round to the message.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.frames import Frame, Opcode

from workbench.core.events import ClientMsg, Event, Sent, Server, ServerMsg, Stage, Ws

# Client message kinds, recognised by the first keys of the SDK's JSON (it writes them in this order).
_CLIENT_KINDS = (
    ('"activity_start"', ClientMsg.ACTIVITY_START),
    ('"activityStart"', ClientMsg.ACTIVITY_START),
    ('"activity_end"', ClientMsg.ACTIVITY_END),
    ('"activityEnd"', ClientMsg.ACTIVITY_END),
    ('"audio_stream_end"', ClientMsg.AUDIO_STREAM_END),
    ('"audioStreamEnd"', ClientMsg.AUDIO_STREAM_END),
    ('"audio"', ClientMsg.AUDIO),
    ('"media_chunks"', ClientMsg.AUDIO),
    ('"client_content"', ClientMsg.CLIENT_CONTENT),
    ('"clientContent"', ClientMsg.CLIENT_CONTENT),
    ('"tool_response"', ClientMsg.TOOL_RESPONSE),
    ('"toolResponse"', ClientMsg.TOOL_RESPONSE),
    ('"setup"', ClientMsg.SETUP),
)
_SERVER_KINDS = (
    ("toolCallCancellation", ServerMsg.TOOL_CALL_CANCELLATION),
    ("toolCall", ServerMsg.TOOL_CALL),
    ("goAway", ServerMsg.GO_AWAY),
    ("sessionResumptionUpdate", ServerMsg.SESSION_RESUMPTION_UPDATE),
    ("setupComplete", ServerMsg.SETUP_COMPLETE),
    ("turnComplete", ServerMsg.TURN_COMPLETE),
    ("generationComplete", ServerMsg.GENERATION_COMPLETE),
    ("interrupted", ServerMsg.INTERRUPTED),
    ("inlineData", ServerMsg.MODEL_AUDIO),
    ("outputTranscription", ServerMsg.OUTPUT_TRANSCRIPTION),
    ("inputTranscription", ServerMsg.INPUT_TRANSCRIPTION),
    ("usageMetadata", ServerMsg.USAGE_METADATA),
    ("serverContent", ServerMsg.SERVER_CONTENT),
)


def classify_client(text: str) -> ClientMsg:
    head = text[:80]
    for needle, kind in _CLIENT_KINDS:
        if needle in head:
            return kind
    return ClientMsg.UNKNOWN


def classify_server(data: bytes | bytearray | memoryview) -> ServerMsg:
    """Name a server frame by the most specific key it carries (a cheap scan of its head, no JSON parse)."""
    head = bytes(data[:400]).decode("utf-8", "replace")
    for needle, kind in _SERVER_KINDS:
        if needle in head:
            return kind
    return ServerMsg.UNKNOWN


def close_side(protocol: Any) -> str:
    """Who started the closing handshake: ``server``, ``client`` or ``none`` (no close frame either way).

    websockets' ``Protocol.close_rcvd_then_sent`` is True when the peer's close frame came first and ours
    was the echo, False when ours came first and the peer echoed it; it stays None when only one frame
    (or none) crossed, and then whichever frame exists tells the side.  A 1011 the client sent and the
    server echoed is the client's, although a close frame was received.
    """
    first = protocol.close_rcvd_then_sent
    if first is not None:
        return "server" if first else "client"
    if protocol.close_sent is not None:
        return "client"
    return "server" if protocol.close_rcvd is not None else "none"


def tapped_connection(emit: Callable[[Event], None], clock: Callable[[], float],
                      base: type[ClientConnection] = ClientConnection) -> type[ClientConnection]:
    """A ``ClientConnection`` subclass that reports to ``emit`` with times from ``clock``.

    ``base``: the connection class to tap (a user's own ``create_connection``, for ``workbench.io.tap``).
    """

    conns = itertools.count(1)

    class TappedConnection(base):  # type: ignore[valid-type,misc]
        """Each instance is one connection, numbered from 1 in ``conn`` (a bridge reconnects)."""

        _seq = 0

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.conn = next(conns)

        async def send(self, message: Any, text: bool | None = None) -> None:  # type: ignore[override]
            await super().send(message, text=text)
            # websockets writes a whole message to the transport before its first await,
            # so by now the frame is in the kernel's hands, in call order.
            TappedConnection._seq += 1
            s = message if isinstance(message, str) else bytes(message).decode("utf-8", "replace")
            emit(Sent(t=clock(), msg=classify_client(s), n_bytes=len(message), seq=self._seq, stage=Stage.WIRE))

        def process_event(self, event: Any) -> None:
            if not isinstance(event, Frame):
                super().process_event(event)
                return
            now = clock()
            if event.opcode in (Opcode.TEXT, Opcode.BINARY):
                data = event.data  # not copied: a frame of model audio is tens of kB, and only its head is read
                emit(Server(t=now, msg=classify_server(data), n_bytes=len(data), stage=Stage.WIRE))
            elif event.opcode is Opcode.PING:
                emit(Ws(t=now, what="server_ping", conn=self.conn))
            elif event.opcode is Opcode.CLOSE:
                emit(Ws(t=now, what="close_frame_received", conn=self.conn))
            super().process_event(event)
            if event.opcode is Opcode.PONG:
                # After websockets matched it to its ping: ``latency`` is that ping's round trip.
                emit(Ws(t=now, what="pong", detail=f"conn {self.conn}", conn=self.conn,
                        latency_ms=round(self.latency * 1000.0, 3)))

        async def ping(self, data: Any = None) -> Any:
            waiter = await super().ping(data)
            emit(Ws(t=clock(), what="ping", detail=f"conn {self.conn}", conn=self.conn))
            return waiter

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            rcvd = self.protocol.close_rcvd
            sent = self.protocol.close_sent
            side = close_side(self.protocol)
            first = {"server": rcvd, "client": sent}.get(side)
            code = first.code if first else 1006
            reason = first.reason if first else "no close frame"
            echo = " (echoed)" if rcvd is not None and sent is not None else ""
            detail = (f"conn {self.conn}: close frame from {side}{echo}"
                      + (f"; transport error {exc!r}" if exc else ""))
            emit(Ws(t=clock(), what="close", code=code, reason=reason, detail=detail, conn=self.conn,
                    closed_by=side))

    return TappedConnection
