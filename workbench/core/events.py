"""The one event schema shared by the recorder, replay, plots and diagnosis.

Every stage of the bridge reports what it did as a small frozen dataclass with a
``kind`` and ``t``: seconds on the session's monotonic clock (0 = session start).
A recording's ``events.jsonl`` holds one ``to_dict()`` per line; ``from_dict``
reads it back.  Unknown kinds and unknown fields survive a round trip in
``Other`` so that a newer recording still loads.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar


class Stage(enum.StrEnum):
    """Where a ``send`` or ``server`` event was seen: handed to / by the SDK, or on the socket."""

    APP = "app"
    WIRE = "wire"


class ClientMsg(enum.StrEnum):
    """``Sent.msg`` values: the kinds of client message (the wire tap also names ``setup`` and ``unknown``)."""

    SETUP = "setup"
    ACTIVITY_START = "activity_start"
    AUDIO = "audio"
    ACTIVITY_END = "activity_end"
    AUDIO_STREAM_END = "audio_stream_end"
    CLIENT_CONTENT = "client_content"
    TOOL_RESPONSE = "tool_response"
    UNKNOWN = "unknown"


class ServerMsg(enum.StrEnum):
    """``Server.msg`` values: one per fact of a server message (one message can carry several)."""

    SETUP_COMPLETE = "setup_complete"
    MODEL_AUDIO = "model_audio"
    MODEL_TEXT = "model_text"
    INPUT_TRANSCRIPTION = "input_transcription"
    OUTPUT_TRANSCRIPTION = "output_transcription"
    INTERRUPTED = "interrupted"
    GENERATION_COMPLETE = "generation_complete"
    TURN_COMPLETE = "turn_complete"
    TOOL_CALL = "tool_call"
    TOOL_CALL_CANCELLATION = "tool_call_cancellation"
    GO_AWAY = "go_away"
    SESSION_RESUMPTION_UPDATE = "session_resumption_update"
    USAGE_METADATA = "usage_metadata"
    SERVER_CONTENT = "server_content"  # the wire tap's name for serverContent with none of the above
    UNKNOWN = "unknown"


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}  # per event class, its fields but ``t``: to_dict runs ~100×/s a session


@dataclass(frozen=True)
class Event:
    t: float
    kind: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        cls = type(self)
        names = _FIELD_NAMES.get(cls)
        if names is None:
            names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls) if f.name != "t")
        d: dict[str, Any] = {"t": round(self.t, 6), "kind": self.kind}
        for name in names:
            v = getattr(self, name)
            if v is not None:
                d[name] = v
        return d


@dataclass(frozen=True)
class SessionMark(Event):
    """Session lifecycle: ``start``, ``connected``, ``setup_complete``, ``end``, ``cut_short``."""

    what: str
    detail: str | None = None
    kind: ClassVar[str] = "session"


@dataclass(frozen=True)
class Frame(Event):
    """A microphone frame returned by ``track.recv()``; ``pts_s`` is its media time."""

    pts_s: float
    n_samples: int
    rate: int
    level_db: float
    kind: ClassVar[str] = "frame"


@dataclass(frozen=True)
class FrameGap(Event):
    """``track.recv()`` returned nothing for ``gap_s``; logged when frames resume or the session ends."""

    start_t: float
    gap_s: float
    resumed: bool
    kind: ClassVar[str] = "frame_gap"


@dataclass(frozen=True)
class Vad(Event):
    """A turn-detector decision (``speech_start`` or ``speech_end``) and why it was taken."""

    decision: str
    reason: str
    media_t: float | None = None
    level_db: float | None = None
    kind: ClassVar[str] = "vad"


@dataclass(frozen=True)
class EndScore(Event):
    """The end-of-turn model scored the open turn after ``silence_ms`` of silence (``turns.py``).

    ``probability``: its P(turn complete); ``complete``: at or above ``threshold`` (the turn then ends
    with reason ``end_model``); ``media_t``: the speech end the silence is measured from.
    """

    model: str
    probability: float
    threshold: float
    complete: bool
    silence_ms: float
    media_t: float | None = None
    kind: ClassVar[str] = "end_score"


@dataclass(frozen=True)
class Sent(Event):
    """A client message: ``msg`` a ``ClientMsg``; ``stage`` ``app`` (handed to the SDK) or ``wire`` (left the socket).

    Both are plain strings in a loaded recording: the enums are ``str``, so comparisons hold either way.

    The bridge's app-stage sends say what they carry: ``conn``, the client core's connection number
    (as in ``Client.conn``); ``turn``, the user turn (0: the greeting's text turn) and ``attempt``, 1 +
    its re-sends, for a turn's messages (not for a tool response).  The wire tap cannot know them, and
    recordings made before these fields (or by ``workbench.tap``) lack them: ``analysis.activities``
    then infers them (its docstring says how).
    """

    msg: str
    n_bytes: int
    seq: int
    stage: str = Stage.APP
    n_samples: int | None = None
    conn: int | None = None
    turn: int | None = None
    attempt: int | None = None
    kind: ClassVar[str] = "send"


@dataclass(frozen=True)
class Server(Event):
    """A server message by kind (``msg``: a ``ServerMsg``); ``stage``: ``wire`` (read off the socket) or ``app``."""

    msg: str
    n_bytes: int = 0
    stage: str = Stage.APP
    n_samples: int | None = None
    text: str | None = None
    detail: str | None = None
    kind: ClassVar[str] = "server"


@dataclass(frozen=True)
class Ws(Event):
    """WebSocket life: ``connect``, ``ping``, ``pong``, ``close``, ``reconnect``.

    ``conn`` numbers the wire tap's connections from 1 (pings, pongs and closes of one socket share it);
    on ``close``, ``closed_by`` says which side sent the first close frame: ``server``, ``client``
    (the server's echo does not make it the server's close) or ``none`` (no close frame: 1006).
    """

    what: str
    code: int | None = None
    reason: str | None = None
    latency_ms: float | None = None
    detail: str | None = None
    conn: int | None = None
    closed_by: str | None = None
    kind: ClassVar[str] = "ws"


@dataclass(frozen=True)
class LoopLag(Event):
    """How late a periodic timer woke up: a blocked loop delays pongs the same way."""

    lag_ms: float
    kind: ClassVar[str] = "loop_lag"


@dataclass(frozen=True)
class Watchdog(Event):
    """The response watchdog fired: no server response within ``after_s`` of ActivityEnd."""

    after_s: float
    action: str
    kind: ClassVar[str] = "watchdog"


@dataclass(frozen=True)
class Client(Event):
    """A decision of the bridge's client core (its connection's life), with the why as enum values.

    ``action`` is one of ``reconnect``, ``resend``, ``skip_resend``, ``wait_longer``, ``give_up``,
    ``close``, ``interrupted``; ``reason`` names the cause (``go_away``, ``closed``, ``send_failed``,
    ``watchdog``, ``dead_connection``, ``resume_rejected``, ``resend_limit``, ``reconnect_limit``,
    ``greeting_unanswered``, ``barge_in``, ``consumed_by_server``, ``heard_by_server``, ...).
    Turn and connection numbers are fields, so no reader parses ``detail``.
    """

    action: str
    reason: str
    conn: int | None = None
    turn: int | None = None
    attempt: int | None = None
    handle: str | None = None
    detail: str | None = None
    kind: ClassVar[str] = "client"


@dataclass(frozen=True)
class Error(Event):
    """An error a stage caught, with where it happened."""

    where: str
    message: str
    kind: ClassVar[str] = "error"


@dataclass(frozen=True)
class Other(Event):
    """An event of a kind this version does not know; kept, not dropped."""

    raw: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "other"

    def to_dict(self) -> dict[str, Any]:
        return {"t": self.t, **self.raw}


KINDS: dict[str, type[Event]] = {
    c.kind: c
    for c in (SessionMark, Frame, FrameGap, Vad, EndScore, Sent, Server, Ws, LoopLag, Watchdog, Client, Error)
}


def from_dict(d: dict[str, Any]) -> Event:
    """Rebuild an event from a JSON line; unknown kinds or fields come back as ``Other``."""
    cls = KINDS.get(d.get("kind", ""))
    if cls is None:
        return Other(t=float(d.get("t", 0.0)), raw={k: v for k, v in d.items() if k != "t"})
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in d.items() if k in names}
    try:
        return cls(**kwargs)
    except TypeError:
        return Other(t=float(d.get("t", 0.0)), raw={k: v for k, v in d.items() if k != "t"})
