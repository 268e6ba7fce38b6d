"""Diagnosis of a recording: which failure happened, with the evidence, and its likely cause.

Sans-I/O: every rule is a plain function over the recording's events (a ``Context`` holds the
events DataFrame split by kind, the session's keepalive settings, the client core's ``client``
events and, when present, the emulator's own log ``emulator.jsonl``) and returns findings.
Nothing here touches a socket; the only I/O is reading the recording in the command-line shell.

The rules test the hypotheses of DESIGN.md section 3 and the real service's behaviours of
issue 12: the four causes of ``1011 keepalive ping timeout`` (a late pong while the server was
alive, the receive loop stopped with frames unread, the event loop blocked, a stall when an
answer was due), judged per connection so a ping cut by another close gets no verdict; Failure
A told apart as never heard / heard but not answered / empty answer / late answer (and a late
answer that hides the next turn's Failure A); Failure B; barge-in; goAway; resumption (rejected
resume, duplicate and lost turns); the bridge giving up; audio outside an activity and close codes.

A session with no ``error`` or ``warning`` finding yields exactly one finding, ``healthy``,
whose evidence carries the summary and any ``info`` notes.
"""

from __future__ import annotations

import argparse
import enum
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

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


@dataclass
class Activity:
    """One ActivityStart on the wire and what followed it, up to its ActivityEnd (``end_t``)."""

    start_t: float
    end_t: float | None = None
    n_audio: int = 0
    first_audio_t: float | None = None
    last_audio_t: float | None = None
    next_start_t: float = math.inf
    cut_t: float | None = None  # the connection was replaced while the activity was open (the bridge re-sends it)


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
    problems: tuple[str, ...] = ()
    activities: list[Activity] = field(default_factory=list)
    orphan_ends: list[float] = field(default_factory=list)
    stray_audio: list[tuple[float, float | None]] = field(default_factory=list)  # (t, preceding ActivityEnd t)
    recovered: dict[float, float] = field(default_factory=dict)  # unanswered ActivityEnd t -> re-sent turn's answer
    client: pd.DataFrame | None = None  # the client core's decisions (``Client`` events)
    gave_up: dict[str, Any] | None = None  # session.json ``gave_up``: the bridge's terminal decision
    emu: pd.DataFrame | None = None  # the emulator's own log (emulator.jsonl beside the recording), if any
    turns: pd.DataFrame | None = None  # analysis.turn_table: which user turn each activity carried
    connects: list[float] = field(default_factory=list)  # when each connection began (``_connect_times_of``)

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


# -- reading the events -----------------------------------------------------------------------------------------


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


def _walk(sends: pd.DataFrame, connects: Sequence[float] = ()) -> tuple[
        list[Activity], list[float], list[tuple[float, float | None]]]:
    """Walk the sends in wire order: activities, ActivityEnds without a start, audio outside an activity.

    A new connection (``connects`` after the first) ends the wire stream of the old one: an activity
    still open then is ``cut``, not an activity that never ended.
    """
    acts: list[Activity] = []
    orphans: list[float] = []
    stray: list[tuple[float, float | None]] = []
    cur: Activity | None = None
    last_end: float | None = None
    if "msg" not in sends:
        return acts, orphans, stray
    swaps = sorted(connects)[1:]
    for t, msg in zip(sends["t"].to_numpy(float), sends["msg"], strict=True):
        while swaps and swaps[0] <= t:
            if cur is not None:
                cur.cut_t = swaps[0]
                acts.append(cur)
            cur, last_end = None, None
            swaps.pop(0)
        if msg == "activity_start":
            if cur is not None:
                acts.append(cur)
            cur, last_end = Activity(start_t=t), None
        elif msg == "activity_end":
            if cur is None:
                orphans.append(t)
            else:
                cur.end_t = t
                acts.append(cur)
                cur = None
            last_end = t
        elif msg == "audio":
            if cur is None:
                stray.append((t, last_end))
            else:
                cur.n_audio += 1
                cur.first_audio_t = t if cur.first_audio_t is None else cur.first_audio_t
                cur.last_audio_t = t
    if cur is not None:
        acts.append(cur)
    for a, b in zip(acts, acts[1:], strict=False):
        a.next_start_t = b.start_t
    return acts, orphans, stray


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
    connects = _connect_times_of(ws)
    acts, orphans, stray = _walk(sends, connects)
    from workbench.analysis.tables import turn_table

    tt = turn_table(rec)
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
        activities=acts,
        orphan_ends=orphans,
        stray_audio=stray,
        recovered=_recovered(tt),
        client=_select(ev, "client"),
        gave_up=rec.meta.get("gave_up") if isinstance(rec.meta.get("gave_up"), dict) else None,
        emu=_emulator_log(rec.path),
        turns=tt,
        connects=connects,
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


def _recovered(tt: pd.DataFrame) -> dict[float, float]:
    """ActivityEnd times whose turn went unanswered but was answered after a re-send: end t -> answer t."""
    out: dict[float, float] = {}
    for row in tt[~tt["answered"] & tt["activity_end"].notna()].itertuples():
        later = tt[(tt["turn"] == row.turn) & (tt["attempt"] > row.attempt) & tt["answered"]]
        if len(later):
            out[float(row.activity_end)] = float(later["turn_complete"].iloc[0])
    return out


def _resent_answer(c: Context, end_t: float) -> float | None:
    """When the turn of the ActivityEnd at ``end_t`` went unanswered but its re-send was answered: that time."""
    return next((v for k, v in c.recovered.items() if abs(k - end_t) < 1e-6), None)


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


_CONN_RE = re.compile(r"\bconn (\d+)")


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


# -- rules -------------------------------------------------------------------------------------------------------


def no_activity_end(c: Context) -> list[Finding]:
    """Speech started but no ActivityEnd followed before the next start or the end of the session (Failure B).

    Needs ``send`` activity_start/activity_end (wire stage preferred) and ``vad`` speech_start/speech_end.
    """
    out = []
    for a in c.activities:
        if a.end_t is not None or a.cut_t is not None:
            continue
        until = min(a.next_start_t, c.end_t)
        audio = (f"{a.n_audio} audio chunks sent {_s(a.first_audio_t)}–{_s(a.last_audio_t)}"
                 if a.n_audio and a.first_audio_t is not None and a.last_audio_t is not None else "no audio sent")
        where = "before the next ActivityStart" if a.next_start_t < math.inf else "before the session ended"
        why = _why_no_end(c, a.start_t, until)
        out.append(Finding(
            "no_activity_end", "warning" if why.startswith(CLOSED_FIRST) else "error",
            f"ActivityStart at {_s(a.start_t)} was never followed by ActivityEnd",
            f"ActivityStart at {_s(a.start_t)}; {audio}; no ActivityEnd {where} at {_s(until)} "
            f"({until - a.start_t:.1f} s open)", a.start_t, why))
    starts = _vad(c, "speech_start")
    ends = _vad(c, "speech_end")
    act_starts = np.array([a.start_t for a in c.activities])
    for i, ts in enumerate(starts):
        nxt = float(starts[i + 1]) if i + 1 < len(starts) else math.inf
        if _between(ends, ts, nxt, closed_hi=False).size or _between(act_starts, ts - 1e-6, nxt, closed_hi=False).size:
            continue
        until = min(nxt, c.end_t)
        out.append(Finding(
            "no_activity_end", "error",
            f"speech started at {_s(ts)} but neither ActivityStart nor ActivityEnd was sent",
            f"turn detector speech_start at {_s(ts)}; no speech_end and no activity signal until {_s(until)}",
            float(ts), _why_no_end(c, float(ts), until)))
    return out


CLOSED_FIRST = "the connection closed"  # how a cause that blames the close (not the turn's own path) begins


def _why_no_end(c: Context, start: float, until: float) -> str:
    ends = _vad(c, "speech_end")
    decided = _between(ends, start, until)
    app_end = _between(_times(c.app_sends, msg="activity_end"), start, until)
    tried = [float(x[0]) for x in (decided, app_end) if x.size]
    gone = _closed_before(c, start, min(tried)) if tried else None
    if gone is not None:
        return (f"{CLOSED_FIRST} at {_s(gone.t)} ({gone.code} '{gone.reason}', closed by {gone.by}) before "
                f"the turn ended at {_s(min(tried))}: the ActivityEnd had no open socket to go to, so the close is the "
                "cause, not the send path (see close)")
    if decided.size:
        wire = c.sends["t"].to_numpy() if c.wire_sends and len(c.sends) else np.array([])
        app = c.app_sends["t"].to_numpy() if len(c.app_sends) else np.array([])
        last_wire = float(wire[wire <= decided[0]].max()) if (wire <= decided[0]).any() else None
        if last_wire is not None and app.size and (app > last_wire + 0.5).sum() == 0 and decided[0] - last_wire > 0.5:
            return (f"the turn detector decided speech_end at {_s(decided[0])} but no ActivityEnd left the socket: "
                    f"nothing was written after {_s(last_wire)}; the writer was stuck in a send that never "
                    "completed (the peer stopped reading, e.g. a server blocked on a client that stopped receiving)")
        return (f"the turn detector decided speech_end at {_s(decided[0])} but no ActivityEnd left the socket: "
                "the send path (send order / writer) lost it")
    if c.wire_sends and app_end.size:
        return (f"the application handed ActivityEnd to the SDK at {_s(app_end[0])} but it never left the socket "
                "(writer blocked or connection gone)")
    gaps = [g for g in _frame_gaps(c, c.silence_ms / 1000.0) if start <= g[1] and g[0] < until]
    if gaps:
        g0, g1, resumed = gaps[0]
        return (f"frames stopped at {_s(max(g0, start))} (track.recv() returned nothing for {g1 - max(g0, start):.1f} s"
                f"{'' if resumed else ', never resumed'}) and the detector did not end the turn on the clock: "
                "silence was measured by counting frames (Failure B)")
    gone = _closed_before(c, start, until)
    if gone is not None and until - gone.t < 1.0:  # the session ended with the socket: the turn had no time to end
        return (f"{CLOSED_FIRST} at {_s(gone.t)} ({gone.code} '{gone.reason}', closed by {gone.by}) while the user was "
                f"still speaking, {gone.t - start:.1f} s into the turn, and the session ended with it (see close and "
                "gave_up)")
    return ("frames kept arriving but the turn detector never measured enough silence "
            "(threshold too low for the noise floor, or a maximum turn length missing)")


def _closed_before(c: Context, lo: float, hi: float) -> WsClose | None:
    """The close in [lo, hi] after which no new connection opened before ``hi``: the socket was gone."""
    connects = c.connects
    for cl in c.closes:
        if lo <= cl.t <= hi + 0.05 and not [x for x in connects if cl.t < x <= hi]:
            return cl
    return None


def _vad_end_between(c: Context, lo: float, hi: float) -> float | None:
    """When the turn detector decided speech_end within [lo, hi], if it did."""
    ts = _vad(c, "speech_end")
    ts = ts[(ts >= lo) & (ts <= hi)]
    return float(ts[0]) if ts.size else None


def frames_stopped_in_turn(c: Context) -> list[Finding]:
    """Frames stopped while a turn was open for longer than the silence window: was the turn ended on the clock?

    Needs ``frame`` events (or ``frame_gap``); a gap still open at the end is measured to the last event.
    A gap during which ActivityEnd was still sent is an ``info`` note: the detector ends turns on the clock.
    """
    out = []
    min_s = c.silence_ms / 1000.0
    gaps = _frame_gaps(c, min_s)
    for a in c.activities:
        if a.cut_t is not None:
            continue  # its connection was replaced mid-turn: the re-sent activity carries the turn
        until = a.end_t if a.end_t is not None else min(a.next_start_t, c.end_t)
        for g0, g1, resumed in gaps:
            if not (g0 < until and g1 > a.start_t):
                continue
            g0 = max(g0, a.start_t)
            span = f"frames stopped at {_s(g0)} for {g1 - g0:.2f} s" + ("" if resumed else " (never resumed)")
            if a.end_t is not None and g0 <= a.end_t <= g1:
                out.append(Finding(
                    "frames_stopped_in_turn", "info", f"frames stopped in the turn at {_s(g0)}; ActivityEnd sent on "
                    "the clock", f"{span}; ActivityEnd still sent at {_s(a.end_t)}, {(a.end_t - g0) * 1000:.0f} ms "
                    f"after the last frame", g0))
            elif a.end_t is None and (decided := _vad_end_between(c, g0, until)) is not None:
                out.append(Finding(
                    "frames_stopped_in_turn", "info", f"frames stopped in the turn at {_s(g0)}; the detector "
                    "ended it on the clock", f"{span}; speech_end decided at {_s(decided)}, "
                    f"{(decided - g0) * 1000:.0f} ms after the last frame; the ActivityEnd itself never left "
                    "the socket (see no_activity_end)", g0))
            elif a.end_t is None:
                out.append(Finding(
                    "frames_stopped_in_turn", "error", f"frames stopped at {_s(g0)} in an open turn and no "
                    "ActivityEnd followed", f"turn opened at {_s(a.start_t)}; {span}; silence window "
                    f"{c.silence_ms:.0f} ms; no ActivityEnd before {_s(until)}", g0,
                    "the turn detector waits for frames to measure silence: track.recv() stops returning frames "
                    "in silence (DTX, muted track), so ActivityEnd is never sent (Failure B mechanism)"))
            elif (late := _arrived_late(c, g0, g1)) is not None:
                out.append(Finding(
                    "frames_stopped_in_turn", "info", f"frames arrived late at {_s(g0)}; the turn rightly stayed open",
                    f"{span}, but the audio after the gap continues {late * 1000:.0f} ms of media time later: the "
                    "frames were delayed (a busy loop or the network), not silent, and the detector judged media time",
                    g0))
            else:
                out.append(Finding(
                    "frames_stopped_in_turn", "warning", f"frames stopped at {_s(g0)} in a turn that stayed open",
                    f"{span} (silence window {c.silence_ms:.0f} ms) yet ActivityEnd came only at {_s(a.end_t)}, "
                    f"after frames resumed", g0,
                    "silence measured by counting frames: the gap did not count as silence (Failure B mechanism)"))
    return out


def _arrived_late(c: Context, g0: float, g1: float) -> float | None:
    """Media time between the frames either side of an arrival gap, when it is well short of the gap.

    A frame's ``pts_s`` is its media time: after a real stop in the audio (DTX, a muted track) it
    jumps by about the gap; after frames that were only delayed it continues where it left off.
    """
    fr = _select(c.events, "frame")
    if "pts_s" not in fr or not len(fr):
        return None
    t = fr["t"].to_numpy(float)
    pts = fr["pts_s"].to_numpy(float)
    before, after = np.flatnonzero(t <= g0 + 1e-9), np.flatnonzero(t >= g1 - 1e-9)
    if not before.size or not after.size:
        return None
    media = float(pts[after[0]] - pts[before[-1]])
    return media if 0.0 <= media < 0.5 * (g1 - g0) else None  # negative: a new media origin, cannot tell


def audio_after_activity_end(c: Context) -> list[Finding]:
    """Audio sent after ActivityEnd and before the next ActivityStart (field report question 2).

    Uses wire-stage sends when the wire tap ran (that is the order the server saw), else app-stage.
    """
    by_end: dict[float, list[float]] = {}
    for t, end in c.stray_audio:
        if end is not None:
            by_end.setdefault(end, []).append(t)
    out = []
    stage = "wire" if c.wire_sends else "app"
    for end, ts in by_end.items():
        ms = [(t - end) * 1000.0 for t in ts]
        out.append(Finding(
            "audio_after_activity_end", "warning", f"{len(ts)} audio chunk(s) sent after ActivityEnd at {_s(end)}",
            f"{len(ts)} audio chunk(s) ({stage} stage) {min(ms):.0f}–{max(ms):.0f} ms after ActivityEnd at {_s(end)}, "
            "before the next ActivityStart", end,
            "audio outside an activity: the server discards it, or a strict server closes with 1007; two tasks "
            "calling send_realtime_input race (one writer draining one queue fixes the order)"))
    return out


def audio_before_activity_start(c: Context) -> list[Finding]:
    """Audio sent before the first ActivityStart: outside any activity, like audio after ActivityEnd."""
    ts = [t for t, end in c.stray_audio if end is None]
    if not ts:
        return []
    return [Finding(
        "audio_before_activity_start", "warning", f"{len(ts)} audio chunk(s) sent outside any activity",
        f"{len(ts)} audio chunk(s) {_s(ts[0])}–{_s(ts[-1])} with no ActivityStart before them", ts[0],
        "with manual activity detection, audio outside an activity is discarded or rejected (1007)")]


def empty_activity(c: Context) -> list[Finding]:
    """ActivityStart followed by ActivityEnd with no audio between them."""
    return [Finding(
        "empty_activity", "warning", f"empty activity {_s(a.start_t)}–{_s(a.end_t)}",
        f"ActivityStart at {_s(a.start_t)} and ActivityEnd at {_s(a.end_t)} with no audio between", a.start_t,
        "an empty activity gives the model nothing to answer; the send order must hold ActivityStart until audio")
        for a in c.activities if a.end_t is not None and a.n_audio == 0]


def activity_end_without_start(c: Context) -> list[Finding]:
    """ActivityEnd with no open activity (none started, or the previous one already ended)."""
    if not c.orphan_ends:
        return []
    ts = c.orphan_ends
    return [Finding(
        "activity_end_without_start", "warning", f"{len(ts)} ActivityEnd(s) without an open activity",
        "ActivityEnd at " + ", ".join(_s(t) for t in ts[:10]) + (" …" if len(ts) > 10 else ""), ts[0],
        "the turn detector and the send order disagree about whether a turn is open")]


CONTENT_KINDS = ("model_audio", "model_text", "tool_call", "output_transcription")  # an answer with something in it


def _transcripts(c: Context, lo: float, hi: float) -> list[tuple[float, str]]:
    """The server's inputTranscription messages the application read in [lo, hi): (t, text)."""
    df = _select(c.server_app, "server", msg="input_transcription")
    return [(float(t), str(x) if x == x else "") for t, x in zip(df["t"], _col(df, "text", ""), strict=True)
            if lo <= t < hi]


def no_response_after_activity_end(c: Context) -> list[Finding]:
    """No model_audio, turn_complete or tool_call within the response timeout after an ActivityEnd (Failure A).

    Told apart by what the server showed of the turn: ``heard_not_answered`` when it sent the turn's
    inputTranscription and then nothing (the rest stay ``no_response_after_activity_end``, "never
    heard" when the session's other turns were transcribed); ``empty_answer`` when the first response
    is a turnComplete with nothing in it (python-genai #2117).
    """
    out = []
    responses = c.responses
    wire_responses = _responses(c, c.server_wire)
    content = _times(c.server_app, msg=CONTENT_KINDS)
    completes = _times(c.server_app, msg="turn_complete")
    interrupts = _times(c.server_app, msg="interrupted")
    any_transcript = bool(len(_select(c.server_app, "server", msg="input_transcription")))
    prev_end: float | None = None
    for a in c.activities:
        if a.end_t is None:
            continue
        # An earlier answer still owing its turnComplete (it waits for playback) owns the next one.
        owed = prev_end is not None and _between(content, prev_end, a.end_t).size > 0 \
            and not _between(completes, prev_end, a.end_t).size
        prev_end = a.end_t
        deadline = a.end_t + c.response_timeout_s
        window = min(a.next_start_t, c.end_t + 1e-9)
        heard = _transcripts(c, a.start_t, _heard_until(c, a))
        first = _between(responses, a.end_t, a.next_start_t, closed_hi=False)
        if first.size and first[0] in completes and not owed and not _between(content, a.end_t, first[0]).size \
                and not _between(interrupts, a.end_t, first[0]).size:
            answered = _resent_answer(c, a.end_t) or _later_attempt_answer(c, a)
            out.append(Finding(
                "empty_answer", "warning" if answered is not None else "error",
                f"empty answer to ActivityEnd at {_s(a.end_t)}",
                f"turnComplete at {_s(first[0])}, {first[0] - a.end_t:.1f} s after ActivityEnd at {_s(a.end_t)}, "
                "with no audio, text or tool call before it"
                + (f"; the server heard the turn ({_quote(heard[0])})" if heard else "")
                + (f"; the re-sent turn was answered at {_s(answered)}" if answered is not None else "")
                + _emu_said(c, a.start_t, first[0]), a.end_t,
                "the model ended its turn without saying anything (python-genai #2117): the user hears silence; "
                "the turn counts as answered unless the bridge checks for content"))
            continue
        if _between(responses, a.end_t, deadline).size:
            continue
        late = _between(responses, deadline, a.next_start_t, closed_hi=False)
        if late.size:
            upto = _transcripts(c, a.start_t, float(late[0]) + 1e-9)
            again = [x for x in upto if x[0] > heard[0][0] and x[1] == heard[0][1]] if heard else []
            evidence = (f"first response {late[0] - a.end_t:.1f} s after ActivityEnd at {_s(a.end_t)} "
                        f"(timeout {c.response_timeout_s:g} s)")
            if heard:
                evidence += f"; heard at {_s(heard[0][0])}"
            if again:
                evidence += (f"; the same transcript came again at {_s(again[0][0])} before the answer "
                             "(the 'late' pattern, gemini-live-api-examples #48)")
            evidence += _emu_said(c, a.start_t, float(late[0]))
            out.append(Finding(
                "no_response_after_activity_end", "warning", f"ActivityEnd at {_s(a.end_t)} answered late",
                evidence, a.end_t, "slow model response"))
            continue
        cut = c.end_t < deadline
        n_read = _between(c.server_app["t"].to_numpy(float), a.end_t, min(deadline, c.end_t)).size
        evidence = (f"ActivityEnd left at {_s(a.end_t)} after {a.n_audio} audio chunk(s); "
                    + (f"the session ended {c.end_t - a.end_t:.1f} s later" if cut else
                       f"no model_audio/turn_complete/tool_call within {c.response_timeout_s:g} s")
                    + f"; {n_read} server message(s) of any kind read in that time")
        answered = _resent_answer(c, a.end_t)
        if answered is not None:
            evidence += f"; the bridge re-sent the turn on a new connection and it was answered at {_s(answered)}"
        evidence += _emu_said(c, a.start_t, min(window, deadline))
        severity: Severity = "warning" if cut or answered is not None else "error"
        recovered = " (recovered by a re-send)" if answered else ""
        if heard:
            out.append(Finding(
                "heard_not_answered", severity, f"turn heard but not answered: ActivityEnd at {_s(a.end_t)}"
                + recovered, f"the server sent the turn's inputTranscription ({_quote(heard[0])}) and then no "
                "answer; " + evidence, a.end_t,
                "the server received and transcribed the turn but the model never answered it (no-response "
                "'heard'): nothing in the recording points at the client; re-send the turn or prompt again"))
            continue
        if any_transcript and not cut:
            evidence += ("; never heard: no inputTranscription for this activity, while the session's others were "
                         "transcribed")
        out.append(Finding(
            "no_response_after_activity_end", severity,
            f"no response to ActivityEnd at {_s(a.end_t)}" + recovered,
            evidence, a.end_t, _why_no_response(c, a, wire_responses)))
    return out


def _emu_said(c: Context, lo: float, hi: float) -> str:
    """What the emulator's log says it did on purpose in [lo, hi] (faults fired, latency spikes), as evidence."""
    parts = []
    for kind in ("fault", "latency_spike"):
        for _, row in _emu(c, "out", kind).iterrows():
            if lo <= float(row["t"]) <= hi:
                parts.append(f"{kind} {_text(row, 'detail') or ''}".strip())
    return "; the emulator's log: " + "; ".join(parts) if parts else ""


def _heard_until(c: Context, a: Activity) -> float:
    """Where an activity's inputTranscription may still arrive: it comes after the ActivityEnd, so a turn
    re-sent back to back with the next one is transcribed after the next ActivityStart, but never after
    the next activity's own end (then the transcript is the next one's)."""
    assert a.end_t is not None
    nxt = next((b for b in c.activities if b.start_t >= a.end_t and b is not a), None)
    hi = a.end_t + c.response_timeout_s
    if nxt is not None and nxt.end_t is not None:
        hi = min(hi, nxt.end_t)
    elif nxt is not None:
        hi = min(hi, max(nxt.start_t, a.end_t + 1.0))
    return min(hi, c.end_t + 1e-9)


def _quote(tr: tuple[float, str]) -> str:
    text = tr[1] if len(tr[1]) <= 40 else tr[1][:39] + "…"
    return f"{text!r} at {_s(tr[0])}"


def _why_no_response(c: Context, a: Activity, wire_responses: np.ndarray) -> str:
    assert a.end_t is not None
    on_wire = _between(wire_responses, a.end_t, min(a.next_start_t, c.end_t))
    if on_wire.size:
        return (f"the server did answer ({on_wire.size} response frame(s) on the wire from {_s(on_wire[0])}) but the "
                "application never read them: the receive loop stopped (see receive_loop_idle)")
    if a.n_audio == 0:
        return "the activity was empty: no audio between ActivityStart and ActivityEnd"
    after = [t for t, end in c.stray_audio if end == a.end_t]
    if after:
        return f"{len(after)} audio chunk(s) followed ActivityEnd before the next ActivityStart"
    if not c.wire_sends:
        return "no wire tap: cannot tell whether ActivityEnd left the socket or the server stayed silent"
    said = _emu_said(c, a.start_t, a.end_t + c.response_timeout_s)
    if "no-response:noise" in said:
        return ("the server took the activity for noise (no speech in it) and did not answer (no-response "
                "'noise'): check the turn detector's threshold against the noise floor")
    if "fault stall" in said:
        return ("the server stalled: it neither read the socket nor sent anything (the emulator's stall fault), "
                "so the ActivityEnd was not even received in time")
    return (f"ActivityEnd left the socket at {_s(a.end_t)} after the turn's audio and the server sent no response: "
            "inference never triggered on the server side (Failure A); nothing in the recording points at the client")


def receive_loop_idle(c: Context) -> list[Finding]:
    """The socket kept delivering frames but the application stopped reading them.

    The SDK's ``receive()`` ends at every turn_complete; a bridge that iterates it once reads nothing
    after the greeting. Needs wire-stage ``server`` events (the wire tap's ``process_event``).
    """
    idle = _receive_idle(c)
    if idle is None:
        return []
    n = idle.unread_t.size
    if idle.last_app_t is None:
        last = "the application never read a server message"
        t = float(idle.unread_t[0])
    else:
        last = f"the application's last read was at {_s(idle.last_app_t)} ({idle.last_app_msg})"
        t = idle.last_app_t
    evidence = (f"{last}; {n} frame(s) read off the socket after it ({_s(idle.unread_t[0])}–{_s(idle.unread_t[-1])}) "
                f"were never read by the application; session ended at {_s(c.end_t)}")
    full = c.max_queue is not None and n >= c.max_queue
    if full:
        evidence += (f"; max_queue={c.max_queue} frames were waiting, so websockets stopped reading the socket "
                     "(pongs unread from then on)")
    after_complete = idle.last_app_msg == "turn_complete"
    return [Finding(
        "receive_loop_idle", "error", "the application stopped reading server messages", evidence, t,
        ("receive() ended at turn_complete and was not called again: the receive loop must be "
         "`while True: async for msg in session.receive()`" if after_complete else
         "the receive loop stopped or is stuck") + ("; with max_queue full, pongs go unread and the keepalive "
                                                     "closes the session with 1011" if full else ""))]


def unanswered_pings(c: Context) -> list[Finding]:
    """Keepalive pings with no pong within the ping timeout (``live.ping_timeout_s`` in session.json).

    Judged per connection: a ping whose connection closed for another reason before its timeout ran
    out, or whose session ended first, gets no verdict.
    """
    bad = [p for p in c.pings if p.outcome is PingOutcome.UNANSWERED]
    if not bad:
        return []
    parts = []
    for p in bad[:5]:
        on = f" (conn {p.conn})" if p.conn is not None else ""
        if p.pong_t is None:
            until = p.closed_t if p.closed_t is not None else c.end_t
            parts.append(f"ping at {_s(p.t)}{on}: no pong in the {until - p.t:.1f} s until "
                         + ("its connection closed" if p.closed_t is not None else "the session ended"))
        else:
            parts.append(f"ping at {_s(p.t)}{on}: pong {p.pong_t - p.t:.1f} s later")
    return [Finding(
        "unanswered_pings", "error", f"{len(bad)} keepalive ping(s) unanswered within {c.ping_timeout_s:g} s",
        "; ".join(parts) + (" …" if len(bad) > 5 else ""), bad[0].t, _why_unanswered(c, bad[0])[1])]


LATE_PONG_S = 5.0  # a pong this slow is late: loopback answers in ms; Gemini's come 8-30 s late (sip-to-ai PR #14)


def late_pongs(c: Context) -> list[Finding]:
    """Pongs that came back late but in time (or with no ping timeout set): the server's keepalive is slow.

    Information when the connection has no ping timeout (``ping_timeout=None``, the bridge's default:
    nothing closes on a late pong) or when the pongs stay well inside it; a warning when a pong used
    half the timeout or more, because the next one may trip it.
    """
    late = [p for p in c.pings if p.answered and (p.latency_s or 0.0) >= LATE_PONG_S]
    if not late:
        return []
    worst = max(late, key=lambda p: p.latency_s or 0.0)
    lat = [p.latency_s or 0.0 for p in late]
    risky = math.isfinite(c.ping_timeout_s) and max(lat) >= 0.5 * c.ping_timeout_s
    setting = ("no ping timeout (ping_timeout=None), so late pongs close nothing" if not math.isfinite(c.ping_timeout_s)
               else f"ping_timeout={c.ping_timeout_s:g} s")
    return [Finding(
        "late_pongs", "warning" if risky else "info", f"{len(late)} keepalive pong(s) came {LATE_PONG_S:g} s or more "
        "after their ping", f"pong delays {min(lat):.1f}–{max(lat):.1f} s (worst: ping at {_s(worst.t)}, pong at "
        f"{_s(worst.pong_t or 0.0)}); {setting}", late[0].t,
        "the server answers pings late (live Gemini: 8–30 s, aicc2025/sip-to-ai PR #14)"
        + (f"; a pong later than {c.ping_timeout_s:g} s would close the connection with 1011 keepalive ping "
           "timeout: use ping_interval=None or ping_timeout >= 30 s" if risky else ""))]


def loop_lag(c: Context) -> list[Finding]:
    """Event-loop lag samples above the threshold: a blocked loop delays pongs like an unread socket."""
    lag = _select(c.events, "loop_lag")
    if "lag_ms" not in lag or not len(lag):
        return []
    ms = lag["lag_ms"].to_numpy(float)
    above = ms > c.lag_threshold_ms
    if not above.any():
        return []
    max_ms, max_t = _max_lag(c)
    blocked = _loop_blocked(c)
    return [Finding(
        "loop_lag", "error" if blocked else "warning",
        f"event loop lagged above {c.lag_threshold_ms:g} ms {int(above.sum())} time(s)",
        f"{int(above.sum())} of {ms.size} samples above {c.lag_threshold_ms:g} ms; max {max_ms:.0f} ms at "
        f"{_s(max_t or 0.0)}; p99 {np.percentile(ms, 99):.0f} ms", max_t,
        "CPU work or a blocking call inside a coroutine" + (
            f"; a stall of {max_ms / 1000:.1f} s is long enough to miss the {c.ping_timeout_s:g} s ping timeout"
            if blocked else ""))]


CLOSE_CODES = {
    1000: ("info", "normal closure"),
    1001: ("info", "going away"),
    1006: ("error", "abnormal closure, no close frame: network drop or the peer process died"),
    1007: ("error", "invalid argument from the server (e.g. audio outside an activity with a strict server)"),
    1008: ("error", "policy violation from the server (API key, quota, model or config not allowed)"),
    1011: ("error", "internal error"),
}


def close(c: Context) -> list[Finding]:
    """The websocket close: code, reason, which side, and the likely cause given the other evidence."""
    out = []
    reconnect_ts = c.connects[1:]
    pings = c.pings
    for cl in c.closes:
        t, code, reason, detail = cl.t, cl.code, cl.reason, cl.detail
        severity, meaning = CLOSE_CODES.get(code or 0, ("error", "unexpected close code"))
        from_server = cl.by == "server" or (cl.by == "unknown" and "from server" in detail)
        if cl.keepalive:
            meaning = "client-side keepalive failure: " + _keepalive_cause(c, t, cl.conn)
        elif code == 1011 and from_server:
            meaning = "server internal error (1011 sent by the server)"
            if "deadline expired" in reason.lower():
                meaning += "; 'Deadline expired': the connection reached its time limit (goAway by age)"
        elif code == 1011 and cl.by == "client":
            meaning = "internal error (1011 sent by the client)"
        elif code == 1007:
            stray = len(c.stray_audio)
            meaning += f"; {stray} audio chunk(s) were sent outside an activity" if stray else ""
        elif code == 1008 and "not found" in reason:
            meaning = "the server does not know the model (1008 policy violation): check the model name"
        elif code == 1008 and "resumption handle" in reason.lower():
            meaning = ("the server refused the resumption handle (1008): expired (handles live 2 h) or not this "
                       "session's; resume with the latest handle or start a new session")
        cut = [p for p in pings if p.outcome is PingOutcome.CUT and p.closed_t == t]
        if cut and code not in (1000, 1001):  # with pings every second one is nearly always in flight
            meaning += (f"; a keepalive ping sent {(t - cut[-1].t) * 1000:.0f} ms before the close was still in "
                        "flight: it was not unanswered and is not the cause")
        went = _between(_times(c.server_app, msg="go_away"), -math.inf, t)
        if went.size and (not reconnect_ts or reconnect_ts[-1] < went[-1]):
            meaning += f"; after the server's goAway at {_s(went[-1])} (connection time limit)"
        # A connect after the close (a retry of one reconnect has no reconnect mark of its own) means it came back.
        later = sorted([r for r in reconnect_ts if r > t] + [x for x in _times(c.ws, what="connect") if x > t])
        if severity == "error" and later:
            severity, meaning = "warning", meaning + f"; the bridge reconnected at {_s(later[0])}"
        out.append(Finding(
            "close", severity, f"websocket closed {code} {reason}".rstrip(),
            f"close {code} '{reason}' at {_s(t)}" + (f" ({detail})" if detail else ""), t, meaning))
    return out


def _keepalive_cause(c: Context, close_t: float, conn: int | None = None) -> str:
    """Why the keepalive closed the connection ``conn`` at ``close_t``: the verdict on its unanswered ping."""
    unanswered = [p for p in c.pings if p.outcome is PingOutcome.UNANSWERED and p.t <= close_t
                  and (conn is None or p.conn is None or p.conn == conn)]
    if not unanswered:
        idle = _receive_idle(c)
        if idle is not None:
            return _unread_cause(c, idle.last_app_t, idle.unread_t.size)
        return "no unanswered ping in the recording: cannot tell which (was the wire tap installed?)"
    return _why_unanswered(c, unanswered[-1])[1]


def _asks(c: Context) -> np.ndarray:
    """When the client asked the server for an answer: ActivityEnd, a text turn, a tool response."""
    return _times(c.sends, msg=("activity_end", "client_content", "tool_response"))


def _due_at(c: Context, x: float) -> float | None:
    """The ask still waiting for a server reply at ``x`` (turn_complete, tool_call or interrupted), if any."""
    srv = c.server_wire if c.wire_server else c.server_app
    replies = _times(srv, msg=("turn_complete", "tool_call", "interrupted"))
    asks = _asks(c)
    asks = asks[asks <= x]
    if not asks.size:
        return None
    last = float(asks[-1])
    return None if _between(replies, last, x).size else last


def _why_unanswered(c: Context, p: Ping) -> tuple[KeepaliveCause, str]:
    """Tell apart why ping ``p`` got no pong in time: unread socket, blocked loop, late pong or a stall.

    The window is the ping's timeout (up to its connection's close).  Frames left unread come first (with
    max_queue full websockets stops reading, pongs included); then a loop blocked for half the timeout;
    then a live server (frames kept arriving and were read, or nothing was due from it): its pong was
    late, and the client's keepalive setting is the cause; only when an answer was due and nothing at
    all came is it a stall.
    """
    hi = min(p.t + c.ping_timeout_s, p.closed_t if p.closed_t is not None else c.end_t)
    unread = _unread_in(c, hi)
    if unread is not None:
        return KeepaliveCause.RECEIVE_STOPPED, _unread_cause(c, *unread)
    blocked = _blocked_in(c, p.t, hi)
    if blocked is not None:
        ms, at = blocked
        return KeepaliveCause.LOOP_BLOCKED, (
            f"the event loop was blocked ({ms / 1000:.1f} s at {_s(at)}), so pongs were read too late")
    srv = c.server_wire if c.wire_server else c.server_app
    frames = _between(_times(srv), p.t, hi)
    due = _due_at(c, p.t)
    late = (f"late pong: the ping at {_s(p.t)} got no pong within ping_timeout={c.ping_timeout_s:g} s while "
            "the server was alive; live Gemini pongs come 8–30 s late (aicc2025/sip-to-ai PR #14), so the "
            "client's keepalive setting closed the connection (use ping_interval=None or ping_timeout >= 30 s)")
    if frames.size:
        return KeepaliveCause.LATE_PONG, (
            late + f"; the server kept sending frames after the ping ({frames.size} read, last at "
            f"{_s(frames[-1])}), so it was not stalled")
    open_turn = [a for a in c.activities if a.end_t is None and a.cut_t is None and a.start_t < p.t]
    if due is None:
        why = (f"the user's turn was open without ActivityEnd since {_s(open_turn[-1].start_t)} (Failure B): the "
               "server was still waiting for the end of the user's turn" if open_turn
               else "every request had its answer")
        return KeepaliveCause.LATE_PONG, late + f"; nothing was due from the server ({why})"
    if not c.wire_server:
        return KeepaliveCause.UNKNOWN, "no wire tap: cannot tell a stalled server from an unread socket"
    wire_t = _times(c.server_wire)
    last_wire = f"last server frame at {_s(wire_t[wire_t <= p.t][-1])}" if (wire_t <= p.t).any() else "no frames"
    what = "ActivityEnd" if due in _times(c.sends, msg="activity_end") else "the request"
    return KeepaliveCause.STALL, (
        f"server stalled: the ping at {_s(p.t)} went unanswered while the application's receive loop was still "
        f"running and no frames arrived ({last_wire}); {what} at {_s(due)} got no response (Failure A)")


def _unread_cause(c: Context, last_t: float | None, n: int) -> str:
    """The keepalive cause when ``n`` frames waited unread after the application's last read at ``last_t``."""
    return (f"pongs went unread because the receive loop stopped (last application read at "
            f"{_s(last_t) if last_t is not None else 'never'}, {n} frame(s) unread"
            f"{'; max_queue reached' if c.max_queue and n >= c.max_queue else ''})")


def _unread_in(c: Context, hi: float) -> tuple[float | None, int] | None:
    """Frames read off the socket by ``hi - READ_GRACE_S`` that the application had not read by ``hi``."""
    if "msg" not in c.server_wire or not len(c.server_wire):
        return None
    wire = c.server_wire[c.server_wire["msg"] != "setup_complete"]["t"].to_numpy(float)
    app = c.server_app["t"].to_numpy(float) if len(c.server_app) else np.array([])
    app = app[app <= hi]
    last = float(app[-1]) if app.size else None
    unread = wire[(wire > (last if last is not None else -math.inf)) & (wire <= hi - READ_GRACE_S)]
    if not unread.size:
        return None
    return last, int(unread.size)


def _blocked_in(c: Context, lo: float, hi: float) -> tuple[float, float] | None:
    """The longest loop stall of half the ping timeout or more overlapping [lo, hi]: (lag ms, sample t)."""
    lag = _select(c.events, "loop_lag")
    if "lag_ms" not in lag or not len(lag) or not math.isfinite(c.ping_timeout_s):
        return None
    t = lag["t"].to_numpy(float)
    ms = lag["lag_ms"].to_numpy(float)
    hit = (ms >= 0.5 * c.ping_timeout_s * 1000.0) & (t >= lo) & (t - ms / 1000.0 <= hi + 1.0)
    if not hit.any():
        return None
    i = int(np.flatnonzero(hit)[ms[hit].argmax()])
    return float(ms[i]), float(t[i])


def _connect_times_of(ws: pd.DataFrame) -> list[float]:
    """When each connection began: the first ``connect``, then each ``reconnect`` (the bridge's decision to
    replace the connection, which it follows with its own ``connect``); without reconnects, the ``connect``s."""
    connects = np.sort(_times(ws, what="connect"))
    again = np.sort(_times(ws, what="reconnect"))
    if not again.size:
        return connects.tolist()
    first = [float(connects[0])] if connects.size and connects[0] < again[0] else []
    return first + again.tolist()


def go_away(c: Context) -> list[Finding]:
    """Server goAway: when, the time left, and whether the bridge reconnected afterwards.

    Reconnection is seen as ``ws`` what="connect"/"reconnect" after the goAway (the bridge does not emit it yet).
    """
    app = _select(c.server_app, "server", msg="go_away")
    df = app if len(app) else _select(c.server_wire, "server", msg="go_away")
    out = []
    connects = c.connects
    for _, row in df.iterrows():
        t = float(row["t"])
        left = _text(row, "detail") or "?"
        after = [x for x in connects if x > t]
        if after:
            out.append(Finding("go_away", "info", f"server goAway at {_s(t)}; reconnected",
                               f"goAway at {_s(t)} (time left {left}); reconnected at {_s(after[0])}", t))
        else:
            out.append(Finding("go_away", "warning", f"server goAway at {_s(t)} and no reconnect",
                               f"goAway at {_s(t)} (time left {left}); no reconnect before the session ended at "
                               f"{_s(c.end_t)}", t, "the connection time limit (~10 min): resume with the session "
                                                    "handle before timeLeft runs out"))
    return out


def reconnects(c: Context) -> list[Finding]:
    """Reconnections, and user turns lost across them.

    Expects ``ws`` what="connect" per connection (or what="reconnect"). A turn is lost when its ActivityEnd
    went out before a reconnect, no response came before the reconnect, and it was not re-sent: no
    ActivityStart after the reconnect before the next ``vad`` speech_start (a re-send is not driven by new
    speech). Speech is also lost when a speech_start's window saw no audio sent at all (no connection).
    """
    connects = c.connects
    again = connects[1:]
    if not again:
        return []
    responses = c.responses
    speech = _vad(c, "speech_start")
    resend_marks = _times(_select(c.events, "session"), what="resend")
    lost: list[str] = []
    for i, r in enumerate(again):
        prev = connects[i]
        next_speech = speech[speech > r]
        resend_by = float(next_speech[0]) if next_speech.size else math.inf
        next_r = again[i + 1] if i + 1 < len(again) else math.inf
        # The bridge marks its re-send (session "resend"); without the mark, an ActivityStart not driven by speech.
        resent = bool(_between(resend_marks, r, next_r, closed_hi=False).size) or any(
            r < a.start_t < resend_by for a in c.activities)
        for a in c.activities:
            if a.end_t is None or not prev <= a.end_t < r:
                continue
            if not _between(responses, a.end_t, r).size and not resent and not _sent_again(c, a):
                lost.append(f"ActivityEnd at {_s(a.end_t)} unanswered before the reconnect at {_s(r)} and not re-sent")
    audio_t = _times(c.sends, msg=("audio", "activity_start"))
    ends = _vad(c, "speech_end")
    for i, ts in enumerate(speech):
        nxt = float(speech[i + 1]) if i + 1 < len(speech) else c.end_t
        stop = _between(ends, ts, nxt)
        if not _between(audio_t, ts - 1e-6, float(stop[0]) + 1.0 if stop.size else nxt).size:
            lost.append(f"speech at {_s(ts)} never reached a connection (no audio sent)")
    evidence = f"{len(again)} reconnect(s) at " + ", ".join(_s(x) for x in again)
    if lost:
        return [Finding("reconnects", "error", f"{len(lost)} user turn(s) lost across reconnects",
                        evidence + "; " + "; ".join(lost), again[0],
                        "turns in flight when the connection dropped must be re-sent after resuming")]
    return [Finding("reconnects", "info", f"{len(again)} reconnect(s), no user turn lost", evidence, again[0])]


def _later_attempts(c: Context, a: Activity) -> pd.DataFrame | None:
    """The turn table's later attempts of the turn this activity carried; None when the table has no such row."""
    tt = c.turns
    if tt is None or not len(tt) or a.end_t is None:
        return None
    row = tt[(tt["activity_end"] - a.end_t).abs() < 5e-3]
    if not len(row):
        return None
    return tt[(tt["turn"] == row["turn"].iloc[0]) & (tt["attempt"] > row["attempt"].iloc[0])]


def _later_attempt_answer(c: Context, a: Activity) -> float | None:
    """When a later attempt of this activity's turn got a turnComplete (an empty answer's re-send), that time."""
    later = _later_attempts(c, a)
    if later is None:
        return None
    later = later[later["answered"]]
    return float(later["turn_complete"].iloc[0]) if len(later) and later["turn_complete"].notna().any() else None


def _sent_again(c: Context, a: Activity) -> bool:
    """The turn table shows a later attempt of the turn this activity carried (the client core re-sent it)."""
    later = _later_attempts(c, a)
    return later is not None and bool(len(later))


FLOOD_PER_S = 25.0  # server messages of one kind per second that is more than a live answer sends


def server_flood(c: Context) -> list[Finding]:
    """Bursts of one server message kind faster than ``FLOOD_PER_S`` for a second or more (e.g. transcripts)."""
    if "msg" not in c.server_wire and "msg" not in c.server_app:
        return []
    df = c.server_wire if "msg" in c.server_wire and len(c.server_wire) else c.server_app
    out = []
    for kind, group in df.groupby("msg"):
        if kind == "model_audio":  # paced audio chunks are many by design
            continue
        t = np.sort(group["t"].to_numpy(float))
        n = int(FLOOD_PER_S)
        if t.size <= n:
            continue
        window = t[n:] - t[:-n]  # time taken by n + 1 consecutive messages
        fast = np.flatnonzero(window <= 1.0)
        if not fast.size:
            continue
        t0 = float(t[fast[0]])
        rate = n / max(float(window.min()), 1e-3)
        out.append(Finding(
            "server_flood", "warning", f"server flooded {kind} messages from {_s(t0)}",
            f"{t.size} {kind} message(s) in all, up to {rate:.0f}/s (more than {FLOOD_PER_S:g}/s) from {_s(t0)}", t0,
            "many small server messages: a receive loop that stops or reads slowly fills max_queue "
            "quickly, and then pongs go unread (1011 keepalive ping timeout)"))
    return out


def errors(c: Context) -> list[Finding]:
    """Errors a stage caught, grouped by where and message."""
    err = _select(c.events, "error")
    if not len(err):
        return []
    out = []
    where = _col(err, "where", "?")
    message = _col(err, "message", "")
    groups: dict[tuple[str, str], list[float]] = {}
    for t, w, m in zip(err["t"], where, message, strict=True):
        groups.setdefault((str(w), str(m)), []).append(float(t))
    connects = _times(c.ws, what="connect")
    for (w, m), ts in groups.items():
        evidence = f"{len(ts)}× in {w}, first at {_s(ts[0])}: {m}"
        later = connects[connects > ts[-1]]
        if w == "reconnect" and later.size:  # a failed attempt the bridge got past: the session went on
            out.append(Finding("errors", "warning", f"error in {w}: {m}"[:160],
                               evidence + f"; the bridge connected again at {_s(later[0])}", ts[0]))
            continue
        out.append(Finding("errors", "error", f"error in {w}: {m}"[:160], evidence, ts[0]))
    return out


def cut_short(c: Context) -> list[Finding]:
    """The recording was never closed: the process was killed or crashed, so the tail may be missing."""
    if not c.cut_short:
        return []
    evidence = f"session.json has no 'ended'; last event at {_s(c.end_t)}"
    if c.problems:
        evidence += "; " + "; ".join(c.problems)
    return [Finding("cut_short", "warning", f"recording was cut short (process killed?) after t={c.end_t:.2f} s",
                    evidence, c.end_t, "the bridge process did not reach Recorder.close()")]


def watchdog(c: Context) -> list[Finding]:
    """The response watchdog fired (``watchdog`` events: ``after_s``, ``action``), and whether an answer followed."""
    wd = _select(c.events, "watchdog")
    out = []
    responses = c.responses
    for _, row in wd.iterrows():
        t = float(row["t"])
        after_s = _text(row, "after_s")
        waited = f"{float(after_s):g} s" if after_s is not None else "some time"
        action = row.get("action") if isinstance(row.get("action"), str) else "?"
        nxt = min((a.next_start_t for a in c.activities if a.start_t <= t), default=math.inf)
        answered = _between(responses, t, min(nxt, c.end_t))
        # A re-send on a new connection is answered there, after the next ActivityStart: the turn table knows.
        ends = [a.end_t for a in c.activities if a.end_t is not None and a.end_t <= t]
        resent = _resent_answer(c, max(ends)) if ends else None
        if answered.size:
            followed = f"a response followed at {_s(answered[0])}"
        elif resent is not None:
            followed = f"the re-sent turn was answered at {_s(resent)}"
        else:
            followed = "no response followed"
        out.append(Finding(
            "watchdog", "warning", f"response watchdog fired at {_s(t)} ({action})",
            f"no response {waited} after ActivityEnd; action: {action}; {followed}", t,
            None if answered.size or resent is not None
            else "the server did not answer; see no_response_after_activity_end"))
    return out


def barge_in(c: Context) -> list[Finding]:
    """An answer stopped by the user's next turn (START_OF_ACTIVITY_INTERRUPTS, the default): a note.

    The server sends ``interrupted``, then turnComplete without generationComplete, and cancels a
    pending tool call (``tool_call_cancellation``).  Expected behaviour, not a failure.
    """
    srv = c.server_app if len(_select(c.server_app, "server", msg="interrupted")) else c.server_wire
    out = []
    starts = _times(c.sends, msg="activity_start")
    audio = _times(srv, msg="model_audio")
    completes = _times(srv, msg="turn_complete")
    generated = _times(srv, msg="generation_complete")
    cancels = _times(srv, msg="tool_call_cancellation")
    for t in _times(srv, msg="interrupted"):
        before = starts[starts <= t + 1e-6]
        by = f"by the ActivityStart at {_s(before[-1])}" if before.size else "with no ActivityStart before it"
        answering = audio[audio < t]
        since = f"answer audio since {_s(answering[0])}" if answering.size else "no answer audio yet"
        if answering.size and before.size:
            prev = starts[starts < before[-1]]
            lo = float(prev[-1]) if prev.size else -math.inf
            mine = answering[answering > lo]
            since = f"answer audio since {_s(mine[0])}" if mine.size else since
        done = _between(completes, t, t + 30.0)
        if done.size:
            gen = "after generationComplete" if _between(generated, t, done[0]).size else "without generationComplete"
            tail = f"; turnComplete at {_s(done[0])} {gen}"
        else:
            tail = "; no turnComplete followed"
        n_cancel = _between(cancels, t - 1.0, t + 5.0).size
        out.append(Finding(
            "barge_in", "info", f"answer interrupted at {_s(t)} by the user's turn",
            f"interrupted at {_s(t)} {by}; {since}{tail}"
            + (f"; {n_cancel} tool call cancellation(s)" if n_cancel else ""), t))
    return out


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


def resume_rejected(c: Context) -> list[Finding]:
    """A resume the server closed with 1011 because the session's old connection was still open.

    Reported for the real service in aicc2025/sip-to-ai PR #14: close the old socket before resuming.
    Evidence: the client core's ``Client(reason="resume_rejected")``, the emulator's ``resume_rejected``
    log entry, or a resumed connection closed 1011 by the server within seconds while the previous
    connection had not closed yet.
    """
    by_client = [(float(row["t"]), f"the client core recorded {row.get('action')}/resume_rejected"
                  + (f" on conn {int(row['conn'])}" if _text(row, "conn") else ""))
                 for _, row in _client(c, reason="resume_rejected").iterrows()]
    by_server = [(float(row["t"]), f"the emulator rejected the resume ({_text(row, 'detail') or '?'})")
                 for _, row in _emu(c, "in", "resume_rejected").iterrows()]
    n = max(len(by_client), len(by_server))  # the same rejections, seen from both sides
    seen: list[tuple[float, str]] = sorted(by_server[:2] + by_client[:2])
    if not seen:
        n = 0
        closes = c.closes
        connects = _times(c.ws, what="connect")
        for t, handle in _resumes(c):
            prev = connects[connects < t]
            old_open = prev.size and not [x for x in closes if prev[-1] < x.t <= t]
            rejected = [x for x in closes if t <= x.t <= t + 5.0 and x.code == 1011 and x.by in ("server", "unknown")]
            if old_open and rejected:
                n += 1
                seen.append((t, f"the connection resumed at {_s(t)} with handle {handle} was closed 1011 by the "
                                f"server at {_s(rejected[0].t)} while the connection opened at {_s(prev[-1])} was "
                                "still open"))
    if not seen:
        return []
    seen.sort()
    t0 = seen[0][0]
    later_ok = [t for t, _ in _resumes(c) if t > t0 + 0.5] or [t for t in _times(c.ws, what="connect") if t > t0 + 0.5]
    recovered = bool(later_ok) and c.gave_up is None and not len(_client(c, "give_up"))
    return [Finding(
        "resume_rejected", "warning" if recovered else "error",
        f"resume rejected while the old connection was open ({n}×)",
        "; ".join(x for _, x in seen[:4]) + (f"; a later connection opened at {_s(later_ok[0])}" if recovered else ""),
        t0, "the server closes (1011) a resume while the session's previous connection is still open "
            "(aicc2025/sip-to-ai PR #14): close the old socket first, then resume")]


def late_answer_masks_next_turn(c: Context) -> list[Finding]:
    """A turn's answer came so late that it landed after the next turn: the next turn looks answered but is not.

    Answers come in order, one turnComplete per request (interrupted answers included), so the
    turnCompletes of one connection are paired with its ActivityEnds (and text turns) oldest first.
    When a turnComplete that pays an older turn arrives after a newer turn's ActivityEnd, a
    time-window reading takes it for the newer turn's answer; if the newer turn is still unpaid when
    its connection ends, its Failure A was hidden.  A repeated inputTranscription is named when present.
    """
    out = []
    bounds = c.connects[1:] + [math.inf]
    asks = _times(c.sends, msg="client_content")
    items: list[tuple[float, int, Activity | None]] = [(float(t), 0, None) for t in asks]
    items += [(a.end_t, 0, a) for a in c.activities if a.end_t is not None]
    items += [(float(t), 1, None) for t in _times(c.server_app, msg="turn_complete")]
    owed: list[tuple[float, Activity | None]] = []
    masked: dict[int, tuple[Activity, float]] = {}  # id(newer activity) -> (older activity paid, turnComplete t)
    seg = 0

    def settle() -> None:
        for _, b in owed:
            if b is not None and id(b) in masked:
                older, tc = masked[id(b)]
                finding = _masked_finding(c, older, b, tc)
                if finding is not None:
                    out.append(finding)
        owed.clear()

    for t, what, act in sorted(items, key=lambda x: (x[0], x[1])):
        while t >= bounds[seg]:
            settle()
            seg += 1
        if what == 0:
            owed.append((t, act))
        elif owed:
            _, paid = owed.pop(0)
            newest = owed[-1][1] if owed else None
            if paid is not None and newest is not None:
                masked[id(newest)] = (paid, t)
    if c.end_t - (owed[-1][0] if owed else 0.0) >= c.response_timeout_s:
        settle()
    return out


def _masked_finding(c: Context, a: Activity, b: Activity, tc: float) -> Finding | None:
    """The finding when the evidence says the turnComplete at ``tc`` was ``a``'s, else None.

    In-order pairing alone cannot tell a late answer to ``a`` from a server that skipped ``a``
    (Failure A) and answered ``b``: it takes the older turn's transcript again before the answer
    (the 'late' pattern, gemini-live-api-examples #48), or an answer that began before ``b`` ended.
    """
    assert a.end_t is not None and b.end_t is not None
    tr_a = _transcripts(c, a.start_t, b.start_t)
    tr_b = _transcripts(c, b.start_t, tc + 1e-9)
    repeat = [x for x in tr_b if tr_a and x[1] == tr_a[0][1]]
    content = _times(c.server_app, msg=CONTENT_KINDS)
    began = _between(content, a.end_t, tc)
    early = began.size > 0 and began[-1] < b.end_t and not _between(content, b.end_t, tc).size
    if not repeat and not early:
        return None
    spoke = _between(content, a.end_t, b.start_t)
    evidence = (f"turn ending {_s(a.end_t)} got no turnComplete before the next ActivityStart at {_s(b.start_t)}"
                + (f" (its answer began at {_s(spoke[0])})" if spoke.size else "")
                + f"; the turnComplete at {_s(tc)}, {tc - a.end_t:.1f} s after its ActivityEnd, paid it (answers "
                f"come in order); no other turnComplete followed: the turn ending {_s(b.end_t)} got none")
    if repeat:
        evidence += f"; the first turn's transcript came again at {_s(repeat[0][0])} ({_quote(repeat[0])})"
    return Finding(
        "late_answer_masks_next_turn", "error", f"late answer to the turn ending {_s(a.end_t)} masks no answer "
        f"to the turn ending {_s(b.end_t)}", evidence, b.end_t,
        "the late answer to one turn is counted as the next turn's answer, hiding Failure A on the next: "
        "match answers to turns in order (one turnComplete per turn), not by time window")


def duplicate_or_lost_turns(c: Context) -> list[Finding]:
    """A user turn that reached the model twice, or is gone from its context, after a resume.

    From the client's own evidence: a turn re-sent although its first attempt had been heard or
    answered on the old connection (``duplicate_turn``); a resume with a handle that is a snapshot
    from before a turn's ActivityEnd, the turn not re-sent (``lost_turn``: resuming an old handle
    forgets later turns).  From the emulator's log when present: its ``duplicate_turn`` and
    ``lost_turn`` violations, the server's own view.
    """
    out = []
    tt = c.turns
    handles = _handle_times(c)
    resumes = _resumes(c)
    if tt is not None and len(tt):
        for row in tt[tt["attempt"] > 1].itertuples():
            prev = tt[(tt["turn"] == row.turn) & (tt["attempt"] == row.attempt - 1)]
            if not len(prev):
                continue
            p = prev.iloc[0]
            lo = float(p["activity_start"])
            hi = float(row.activity_start)
            # Only a resumed snapshot taken after the first attempt reached the server holds the turn already.
            resumed = [(t, h) for t, h in resumes if t <= hi]
            if not resumed or (th := handles.get(resumed[-1][1])) is None or not th > float(p["activity_end"]):
                continue
            why = None
            if bool(p["answered"]):
                why = f"answered at {_s(float(p['turn_complete']))}"
            elif heard := _transcripts(c, lo, hi):
                why = f"heard ({_quote(heard[0])})"
            if why is not None:
                out.append(Finding(
                    "duplicate_turn", "error", f"turn {row.turn} re-sent after the server already had it",
                    f"turn {row.turn} first sent on conn {int(p['conn'])} at {_s(lo)} was {why}; the connection "
                    f"resumed at {_s(resumed[-1][0])} with handle {resumed[-1][1]} from {_s(th)}, after it; re-sent "
                    f"on conn {int(row.conn)} at {_s(hi)}", hi,
                    "a turn the resumed snapshot already holds reached the model twice: re-send only turns the "
                    "snapshot does not hold (transparent resumption's lastConsumedClientMessageIndex)"))
        for t, handle in resumes:
            th = handles.get(handle)
            if th is None:
                continue
            for row in tt[(tt["activity_end"] > th) & (tt["activity_end"] < t)].itertuples():
                resent = tt[(tt["turn"] == row.turn) & (tt["activity_start"] > t)]
                if not len(resent):
                    out.append(Finding(
                        "lost_turn", "error", f"turn {row.turn} lost by resuming an older snapshot",
                        f"resumed at {_s(t)} with handle {handle} from {_s(th)}; turn {row.turn}'s ActivityEnd at "
                        f"{_s(row.activity_end)} came after that snapshot and was not re-sent", t,
                        "a resumption handle is a snapshot of the conversation when it was issued: turns after it "
                        "are gone on resume unless re-sent"))
    for kind in ("duplicate_turn", "lost_turn"):
        for _, row in _emu(c, "violation", kind).iterrows():
            out.append(Finding(kind, "error", f"{kind.replace('_', ' ')} (emulator's log)",
                               f"the emulator flagged {kind} at {_s(float(row['t']))} on conn "
                               f"{_text(row, 'conn') or '?'}: {_text(row, 'detail') or ''}", float(row["t"]),
                               "the server's own view of the conversation after a resume (emulator.jsonl)"))
    return out


def gave_up(c: Context) -> list[Finding]:
    """The bridge's terminal decision: it stopped trying (``Client(action="give_up")``, session.json ``gave_up``)."""
    rows = _client(c, "give_up")
    if len(rows):
        r = rows.iloc[-1]
        t: float | None = float(r["t"])
        reason, detail = _text(r, "reason") or "?", _text(r, "detail")
    elif c.gave_up is not None:
        t, reason, detail = None, str(c.gave_up.get("reason", "?")), c.gave_up.get("detail")
    else:
        return []
    return [Finding(
        "gave_up", "error", f"the bridge gave up: {reason}",
        f"give_up ({reason})" + (f" at {_s(t)}" if t is not None else "") + (f": {detail}" if detail else ""), t,
        GIVE_UP_REASONS.get(reason, "the bridge's recovery reached its bound"))]


GIVE_UP_REASONS = {  # connection.Reason values the client core gives up with
    "connect_failed": "the first connection could not be opened (endpoint, key or model)",
    "reconnect_limit": "every reconnect attempt failed: the endpoint stayed unreachable or kept closing",
    "reconnect_off": "reconnecting is switched off, so the first lost connection ended the session",
    "resend_limit": "a turn was re-sent the maximum number of times and never answered",
    "response_timeout": "the last turn's answer never came within the response timeout",
    "greeting_unanswered": "the greeting got no answer: the session never started",
    "resume_rejected": "the server kept rejecting the resume (old connection still open?)",
}


RULES: tuple[Callable[[Context], list[Finding]], ...] = (
    no_activity_end, frames_stopped_in_turn, audio_after_activity_end, audio_before_activity_start,
    empty_activity, activity_end_without_start, no_response_after_activity_end, receive_loop_idle,
    unanswered_pings, late_pongs, loop_lag, close, go_away, reconnects, server_flood, errors, cut_short, watchdog,
    barge_in, resume_rejected, late_answer_masks_next_turn, duplicate_or_lost_turns, gave_up,
)


def summary(c: Context) -> str:
    """Turns, answered turns, pings answered, loop lag: one line for the healthy finding."""
    responses = c.responses
    answered = sum(1 for a in c.activities if a.end_t is not None
                   and _between(responses, a.end_t, min(a.next_start_t, c.end_t)).size)
    every = c.pings
    pings = [p for p in every if not p.pending]
    open_ = len(every) - len(pings)
    max_ms, _ = _max_lag(c)
    return (f"{len(c.activities)} turn(s), {answered} answered; pings answered {sum(p.answered for p in pings)}/"
            f"{len(pings)}" + (f" ({open_} without a verdict: closed or ended before their timeout)" if open_ else "")
            + f"; max loop lag {max_ms:.0f} ms; session length {_s(c.end_t)}")


def diagnose(rec: Recording, *, response_timeout_s: float = 5.0, lag_threshold_ms: float = 100.0) -> list[Finding]:
    """Run every rule; with no error or warning, return one ``healthy`` finding carrying the info notes."""
    c = context(rec, response_timeout_s=response_timeout_s, lag_threshold_ms=lag_threshold_ms)
    found = [f for rule in RULES for f in rule(c)]
    if any(f.severity != "info" for f in found):
        return sorted(found, key=lambda f: (SEVERITY_RANK[f.severity], math.inf if f.t is None else f.t))
    notes = "".join(f"; {f.evidence}" for f in found)
    return [Finding("healthy", "info", "healthy session", summary(c) + notes)]


# -- output and command line --------------------------------------------------------------------------------------


def format_findings(findings: Sequence[Finding]) -> str:
    """Findings for the terminal: severity, code and time on one line, evidence and cause indented below."""
    lines = []
    for f in findings:
        when = "" if f.t is None else f"  t={f.t:.2f}s"
        lines.append(f"{f.severity.upper():<7} {f.code}{when}: {f.title}")
        lines.append(f"        evidence: {f.evidence}")
        if f.cause:
            lines.append(f"        likely cause: {f.cause}")
    n = {s: sum(f.severity == s for f in findings) for s in SEVERITY_RANK}
    lines.append(f"{n['error']} error(s), {n['warning']} warning(s), {n['info']} note(s)")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recording", help="recording directory (recordings/<session>)")
    p.add_argument("--response-timeout", type=float, default=5.0, metavar="S",
                   help="seconds after ActivityEnd within which a response must arrive (default %(default)s)")
    p.add_argument("--lag-threshold-ms", type=float, default=100.0, metavar="MS",
                   help="event-loop lag worth reporting, ms (default %(default)s)")
    p.add_argument("--format", choices=["text", "json"], default="text")


def run(args: argparse.Namespace) -> int:
    """Load, diagnose, print; exit code 1 when any finding is an error."""
    from workbench.store.recording import load

    rec = load(args.recording)
    findings = diagnose(rec, response_timeout_s=args.response_timeout, lag_threshold_ms=args.lag_threshold_ms)
    if args.format == "json":
        print(json.dumps([asdict(f) for f in findings], indent=2))
    else:
        print(f"{rec.path}:")
        print(format_findings(findings))
    return 1 if any(f.severity == "error" for f in findings) else 0


def register(subparsers: Any) -> None:
    """Add ``workbench diagnose`` to the CLI."""
    p = subparsers.add_parser(
        "diagnose", help="diagnose a recording: which failure happened, the evidence and the likely cause",
        description="Check a recording for the known failures (no ActivityEnd, no answer, receive loop stopped, "
                    "unanswered pings, blocked loop, close codes, goAway, reconnects). Exit 0 when no error "
                    "finding, 1 otherwise.")
    add_arguments(p)
    p.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="workbench diagnose", description="Diagnose a workbench recording.")
    add_arguments(ap)
    args = ap.parse_args(argv)
    from workbench.store.recording import RecordingError

    try:
        return run(args)
    except (RecordingError, ValueError) as exc:
        print(f"workbench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
