"""What the rules read: a recording's events split by kind, the session's settings, and shared helpers.

Sans-I/O: ``context`` takes a loaded recording and builds a ``Context``: the events DataFrame split by
kind, the session's keepalive settings, the client core's ``client`` events, the activities
(``analysis.activities.walk``: the one walker the turn table shares) and, when present, the emulator's
own log ``emulator.jsonl``.  Derived facts several rules need (closes, pings with their verdicts,
responses) are computed once per context.
"""

from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from workbench.analysis.activities import Activity, Walk, walk

if TYPE_CHECKING:  # pandas and the recording stack load with the recording, not with ``workbench --help``
    import pandas as pd

    from workbench.store.recording import Recording


Severity = Literal["error", "warning", "info"]
SEVERITY_RANK = {"error": 0, "warning": 1, "info": 2}
# A server message that counts as the model answering an ActivityEnd.
RESPONSE_KINDS = ("model_audio", "turn_complete", "tool_call")
DEFAULT_PING_TIMEOUT_S = 20.0  # websockets' default, for recordings that do not say
DEFAULT_SILENCE_MS = 700.0  # the turn detector's default silence window
READ_GRACE_S = 1.0  # how long the application may take to read a frame before it counts as unread


@dataclass(frozen=True)
class Finding:
    """One conclusion: what happened (``title``), the times and counts behind it, and why."""

    code: str
    severity: Severity
    title: str
    evidence: str
    t: float | None = None
    cause: str | None = None


class PingOutcome(enum.Enum):
    """What became of one keepalive ping, judged on its own connection."""

    ANSWERED = "answered"  # a pong within the ping timeout (with no timeout: any pong)
    UNANSWERED = "unanswered"  # no pong while the connection stayed open for the whole timeout
    CUT = "cut"  # the connection closed for another reason before the timeout ran out: no verdict on the pong
    PENDING = "pending"  # the session ended before the timeout ran out


@dataclass(frozen=True)
class Ping:
    """A keepalive ping on connection ``conn`` (the wire tap's number; None in older recordings)."""

    t: float
    pong_t: float | None
    outcome: PingOutcome
    conn: int | None = None
    closed_t: float | None = None  # when its connection closed, if it did before a pong

    @property
    def answered(self) -> bool:
        return self.outcome is PingOutcome.ANSWERED

    @property
    def pending(self) -> bool:
        """No verdict possible: the session ended or the connection closed for another reason first."""
        return self.outcome in (PingOutcome.PENDING, PingOutcome.CUT)

    @property
    def latency_s(self) -> float | None:
        return None if self.pong_t is None else self.pong_t - self.t


class KeepaliveCause(enum.Enum):
    """Why a ping went unanswered within the ping timeout (issue 12's four causes of 1011 keepalive)."""

    LATE_PONG = "late_pong"  # the server was alive (nothing due, or frames kept coming and were read)
    RECEIVE_STOPPED = "receive_stopped"  # frames waited unread: websockets stopped reading the socket
    LOOP_BLOCKED = "loop_blocked"  # the event loop did not run for about the ping timeout
    STALL = "stall"  # an answer was due and nothing at all came from the server
    UNKNOWN = "unknown"  # no wire tap on the server side: cannot tell


@dataclass(frozen=True)
class Context:
    """The events split the way the rules read them, plus the session's settings."""

    events: pd.DataFrame
    sends: pd.DataFrame  # wire-stage sends when the wire tap ran, else app-stage
    app_sends: pd.DataFrame
    wire_sends: bool  # the wire tap recorded client frames: ``sends`` is what the server saw
    wire_server: bool  # the wire tap recorded server frames
    server_app: pd.DataFrame  # server messages the application read
    server_wire: pd.DataFrame  # frames read off the socket (wire tap)
    ws: pd.DataFrame
    frames_t: np.ndarray
    end_t: float
    ping_timeout_s: float
    max_queue: int | None
    silence_ms: float
    response_timeout_s: float
    lag_threshold_ms: float
    cut_short: bool
    walk: Walk  # the activities (``analysis.activities``): the turn table's rows are the same records
    problems: tuple[str, ...] = ()
    client: pd.DataFrame | None = None  # the client core's decisions (``Client`` events)
    gave_up: dict[str, Any] | None = None  # session.json ``gave_up``: the bridge's terminal decision
    emu: pd.DataFrame | None = None  # the emulator's own log (emulator.jsonl beside the recording), if any

    @property
    def activities(self) -> tuple[Activity, ...]:
        return self.walk.activities

    @property
    def orphan_ends(self) -> tuple[float, ...]:
        return self.walk.orphan_ends

    @property
    def stray_audio(self) -> tuple[tuple[float, float | None], ...]:
        """Audio outside an activity: (t, the preceding ActivityEnd's t or None)."""
        return self.walk.stray_audio

    @property
    def connects(self) -> list[float]:
        """When each connection began (``activities.connection_starts``)."""
        return list(self.walk.connects)

    # Derived once and shared by the rules (a frozen dataclass still caches into its ``__dict__``).
    @cached_property
    def closes(self) -> list[WsClose]:
        return _ws_closes(self)

    @cached_property
    def pings(self) -> list[Ping]:
        return _pings(self)

    @cached_property
    def responses(self) -> np.ndarray:
        """When the application read a server message that answers an ask (``RESPONSE_KINDS``)."""
        return _responses(self)


def _where(df: pd.DataFrame, eq: dict[str, Any]) -> pd.DataFrame | None:
    """Rows whose columns equal (or, for tuples, are in) the given values; None when a column is absent."""
    for col, val in eq.items():
        if col not in df:
            return None
        df = df[df[col].isin(val)] if isinstance(val, tuple) else df[df[col] == val]
    return df


def _select(ev: pd.DataFrame, kind: str, **eq: Any) -> pd.DataFrame:
    """Rows of one kind whose columns equal (or, for tuples, are in) the given values."""
    df = ev[ev["kind"] == kind] if "kind" in ev else ev.iloc[0:0]
    hit = _where(df, eq)
    return (df.iloc[0:0] if hit is None else hit).reset_index(drop=True)


def _times(df: pd.DataFrame, **eq: Any) -> np.ndarray:
    """The ``t`` of the rows whose columns match, as ``_select`` matches them."""
    hit = _where(df, eq)
    return np.array([]) if hit is None else hit["t"].to_numpy(float)


def _vad(c: Context, decision: str) -> np.ndarray:
    """When the turn detector decided ``decision`` (speech_start / speech_end)."""
    return _times(_select(c.events, "vad"), decision=decision)


def _between(times: np.ndarray, lo: float, hi: float, *, closed_hi: bool = True) -> np.ndarray:
    """Times in (lo, hi] (or (lo, hi))."""
    return times[(times > lo) & ((times <= hi) if closed_hi else (times < hi))]


def context(rec: Recording, *, response_timeout_s: float = 5.0, lag_threshold_ms: float = 100.0) -> Context:
    """Split a loaded recording's events for the rules."""
    if not response_timeout_s > 0:
        raise ValueError(f"response timeout must be > 0 s, got {response_timeout_s}")
    if not lag_threshold_ms >= 0:
        raise ValueError(f"loop-lag threshold must be >= 0 ms, got {lag_threshold_ms}")
    ev = rec.events
    live = rec.meta.get("live") or {}
    params = rec.meta.get("params") or {}
    all_sends = _select(ev, "send")
    wire_sends = _select(all_sends, "send", stage="wire")
    app_sends = _select(all_sends, "send", stage="app")
    sends = wire_sends if len(wire_sends) else app_sends
    ping_timeout = live.get("ping_timeout_s", DEFAULT_PING_TIMEOUT_S)
    max_queue = live.get("max_queue")
    ws = _select(ev, "ws")
    server_wire = _select(ev, "server", stage="wire")
    return Context(
        events=ev,
        sends=sends,
        app_sends=app_sends,
        wire_sends=bool(len(wire_sends)),
        wire_server=bool(len(server_wire)),
        server_app=_select(ev, "server", stage="app"),
        server_wire=server_wire,
        ws=ws,
        frames_t=_select(ev, "frame")["t"].to_numpy(float),
        end_t=float(ev["t"].max()) if len(ev) else 0.0,
        ping_timeout_s=math.inf if ping_timeout is None else float(ping_timeout),
        max_queue=None if max_queue is None else int(max_queue),
        silence_ms=float(params.get("silence_ms", DEFAULT_SILENCE_MS)),
        response_timeout_s=response_timeout_s,
        lag_threshold_ms=lag_threshold_ms,
        cut_short=rec.cut_short,
        problems=tuple(rec.problems),
        walk=walk(rec),
        client=_select(ev, "client"),
        gave_up=rec.meta.get("gave_up") if isinstance(rec.meta.get("gave_up"), dict) else None,
        emu=_emulator_log(rec.path),
    )


def _emulator_log(path: Any) -> pd.DataFrame | None:
    """The emulator's log beside a recording (``emulator.jsonl``, on the session clock), or None.

    A damaged line is skipped: the recording's own events stay the primary evidence.
    """
    import pandas as pd

    f = Path(path) / "emulator.jsonl"
    if not f.is_file():
        return None
    rows = []
    for line in f.read_text(errors="replace").splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if isinstance(d, dict) and "t" in d and "kind" in d:
            rows.append(d)
    return pd.DataFrame(rows, columns=sorted({k for r in rows for k in r} | {"t", "conn", "direction", "kind",
                                                                             "detail"}))


def _text(row: Any, col: str) -> str | None:
    """A row's value as text, None when the column is absent or NaN."""
    v = row.get(col)
    return None if v is None or v != v else str(v)


def _col(df: pd.DataFrame, col: str, default: Any) -> list[Any]:
    return list(df[col]) if col in df else [default] * len(df)


def _s(t: float) -> str:
    return f"{t:.2f} s"


def _responses(c: Context, df: pd.DataFrame | None = None) -> np.ndarray:
    return _times(c.server_app if df is None else df, msg=RESPONSE_KINDS)


_CONN_RE = re.compile(r"\bconn (\d+)")  # older recordings: a ws event's connection only in its detail


def _conn_of(row: Any) -> int | None:
    """A ws event's connection: the ``conn`` field, else ``conn N`` in ``detail`` (older recordings)."""
    v = row.get("conn")
    if v is not None and v == v:
        return int(v)
    m = _CONN_RE.search(_text(row, "detail") or "")
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class WsClose:
    """One websocket close as the wire tap saw it; ``by`` is server, client, none or unknown (older recordings)."""

    t: float
    conn: int | None
    code: int | None
    reason: str
    by: str
    detail: str

    @property
    def keepalive(self) -> bool:
        """websockets' own keepalive failure: the client closed 1011 'keepalive ping timeout'."""
        return self.code == 1011 and "keepalive" in self.reason and self.by != "server"


def _ws_closes(c: Context) -> list[WsClose]:
    out = []
    for _, row in _select(c.ws, "ws", what="close").iterrows():
        detail = _text(row, "detail") or ""
        by = _text(row, "closed_by")
        if by is None:  # before closed_by: "from server" was written whenever a close frame was received
            by = "client" if "keepalive" in (_text(row, "reason") or "") else "unknown"
        code = _text(row, "code")
        out.append(WsClose(float(row["t"]), _conn_of(row), int(float(code)) if code else None,
                           _text(row, "reason") or "", by, detail))
    return out


def _pings(c: Context) -> list[Ping]:
    """Each ping with the pong that acknowledged it on the same connection, and what became of it.

    A pong acknowledges its own ping and every earlier one (websockets matches by payload); the wire
    tap's ``latency_ms`` tells which ping a pong answered, so a pong to an older ping in flight is not
    taken for a quick answer to a newer one.  A ping whose connection closed for another reason before
    the timeout ran out is ``CUT``: a server that closes 1 ms after a ping did not leave it unanswered.
    """
    pongs = []  # (t, conn, the ping time it acknowledged)
    for _, row in _select(c.ws, "ws", what="pong").iterrows():
        t = float(row["t"])
        lat = _text(row, "latency_ms")
        pongs.append((t, _conn_of(row), t - float(lat) / 1000.0 if lat is not None else -math.inf))
    closes = c.closes
    out = []
    for _, row in _select(c.ws, "ws", what="ping").iterrows():
        t, conn = float(row["t"]), _conn_of(row)
        same = [p for p in pongs if p[0] >= t and (conn is None or p[1] is None or p[1] == conn)]
        acked = [p[0] for p in same if p[2] >= t - 0.005 or p[2] == -math.inf]
        pong_t = acked[0] if acked else None
        ended = next((x for x in closes if x.t >= t and (conn is None or x.conn is None or x.conn == conn)), None)
        deadline = t + c.ping_timeout_s
        if pong_t is not None and pong_t <= deadline and (ended is None or pong_t <= ended.t):
            outcome = PingOutcome.ANSWERED
        elif ended is not None and ended.keepalive:
            outcome = PingOutcome.UNANSWERED
        elif ended is not None and ended.t < deadline:
            outcome = PingOutcome.CUT
        elif ended is None and c.end_t - t < 0.9 * c.ping_timeout_s:  # slack: the close lands a little early
            outcome = PingOutcome.PENDING
        else:
            outcome = PingOutcome.UNANSWERED
        out.append(Ping(t=t, pong_t=pong_t, outcome=outcome, conn=conn,
                        closed_t=None if ended is None or (pong_t is not None and pong_t <= ended.t) else ended.t))
    return out


@dataclass(frozen=True)
class _Idle:
    last_app_t: float | None
    last_app_msg: str | None
    unread_t: np.ndarray


def _receive_idle(c: Context) -> _Idle | None:
    """Frames read off the socket after the application's last read, left unread for more than a grace period."""
    if "msg" not in c.server_wire:
        return None
    # The SDK reads setupComplete itself inside connect(); the application never sees it.
    wire = c.server_wire[c.server_wire["msg"] != "setup_complete"]
    if not len(wire):
        return None
    last_app = c.server_app.iloc[-1] if len(c.server_app) else None
    last_app_t = None if last_app is None else float(last_app["t"])
    unread = wire["t"].to_numpy(float)
    if last_app_t is not None:
        unread = unread[unread > last_app_t]
    if not unread.size or c.end_t - unread[0] <= READ_GRACE_S:
        return None
    last_msg = None if last_app is None else str(last_app["msg"])
    # One server message is several events at one t (usageMetadata rides on the turnComplete message):
    # the read ended at turn_complete if that message carried one.
    same = c.server_app[c.server_app["t"] == last_app_t] if last_app_t is not None else c.server_app.iloc[0:0]
    if (same["msg"] == "turn_complete").any():
        last_msg = "turn_complete"
    return _Idle(last_app_t, last_msg, unread)


def _max_lag(c: Context) -> tuple[float, float | None]:
    lag = _select(c.events, "loop_lag")
    if "lag_ms" not in lag or not len(lag):
        return 0.0, None
    i = int(lag["lag_ms"].to_numpy(float).argmax())
    return float(lag["lag_ms"].iloc[i]), float(lag["t"].iloc[i])


def _loop_blocked(c: Context) -> bool:
    """A loop blocked for half the ping timeout or more can make the keepalive fail on its own."""
    max_ms, _ = _max_lag(c)
    return max_ms >= 0.5 * c.ping_timeout_s * 1000.0


def _frame_gaps(c: Context, min_s: float) -> list[tuple[float, float, bool]]:
    """Stretches with no frame of at least ``min_s``: (last frame, next frame or session end, resumed)."""
    gaps: dict[float, tuple[float, float, bool]] = {}
    ft = c.frames_t
    for a, b in zip(ft, ft[1:], strict=False):
        if b - a >= min_s:
            gaps[round(a, 3)] = (float(a), float(b), True)
    fg = _select(c.events, "frame_gap")
    if {"start_t", "gap_s"} <= set(fg.columns):
        resumed = _col(fg, "resumed", True)
        for start, gap_s, t, res in zip(fg["start_t"], fg["gap_s"], fg["t"], resumed, strict=True):
            if gap_s >= min_s:
                gaps.setdefault(round(start, 3), (float(start), float(max(t, start + gap_s)), res is not False))
    # A gap still open when the session ended is logged by nobody: measure it to the last event.
    # With no frame events at all there is nothing to measure (a recording made without ingest).
    if ft.size and c.end_t - ft[-1] >= min_s and round(ft[-1], 3) not in gaps:
        gaps[round(ft[-1], 3)] = (float(ft[-1]), c.end_t, False)
    return sorted(gaps.values())


CONTENT_KINDS = ("model_audio", "model_text", "tool_call", "output_transcription")  # an answer with something in it


def _transcripts(c: Context, lo: float, hi: float) -> list[tuple[float, str]]:
    """The server's inputTranscription messages the application read in [lo, hi): (t, text)."""
    df = _select(c.server_app, "server", msg="input_transcription")
    return [(float(t), str(x) if x == x else "") for t, x in zip(df["t"], _col(df, "text", ""), strict=True)
            if lo <= t < hi]


def _emu_said(c: Context, lo: float, hi: float) -> str:
    """What the emulator's log says it did on purpose in [lo, hi] (faults fired, latency spikes), as evidence."""
    parts = []
    for kind in ("fault", "latency_spike"):
        for _, row in _emu(c, "out", kind).iterrows():
            if lo <= float(row["t"]) <= hi:
                parts.append(f"{kind} {_text(row, 'detail') or ''}".strip())
    return "; the emulator's log: " + "; ".join(parts) if parts else ""


def _quote(tr: tuple[float, str]) -> str:
    text = tr[1] if len(tr[1]) <= 40 else tr[1][:39] + "…"
    return f"{text!r} at {_s(tr[0])}"


def _handle_times(c: Context) -> dict[str, float]:
    """When each resumption handle arrived: handle -> time of the sessionResumptionUpdate carrying it."""
    out: dict[str, float] = {}
    df = _select(c.server_app, "server", msg="session_resumption_update")
    for t, d in zip(df["t"] if len(df) else [], _col(df, "detail", ""), strict=True):
        m = re.search(r"handle=(\S+)", str(d))
        if m and m.group(1) != "None":
            out.setdefault(m.group(1), float(t))
    return out


def _resumes(c: Context) -> list[tuple[float, str]]:
    """Each resumed connection: (connect t, handle), from ``ws connect`` ("resumed with handle H")."""
    out = []
    for _, row in _select(c.ws, "ws", what="connect").iterrows():
        m = re.search(r"resumed with handle (\S+)", _text(row, "detail") or "")
        if m:
            out.append((float(row["t"]), m.group(1).rstrip(",;")))
    return out


def _client(c: Context, action: str | tuple[str, ...] | None = None, reason: str | None = None) -> pd.DataFrame:
    df = c.client if c.client is not None else c.events.iloc[0:0]
    if action is not None and "action" in df:
        df = df[df["action"].isin(action if isinstance(action, tuple) else (action,))]
    if reason is not None:
        df = df[df["reason"] == reason] if "reason" in df else df.iloc[0:0]
    return df.reset_index(drop=True)


def _emu(c: Context, direction: str, kind: str) -> pd.DataFrame:
    """Entries of the emulator's log (none when the recording has no emulator.jsonl)."""
    if c.emu is None or not len(c.emu):
        return c.events.iloc[0:0]
    return c.emu[(c.emu["direction"] == direction) & (c.emu["kind"] == kind)].reset_index(drop=True)
