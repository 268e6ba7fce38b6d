"""The one walker over a recording's activities: which user turn each ActivityStart carried, and what followed.

``walk(rec)`` reads the client's sends in the order the server saw them (the wire tap's when it ran,
else what the application handed to the SDK) and pairs each ActivityStart with its ActivityEnd on
the same connection; ``activities(rec)`` is its list.  The turn table (``tables.turn_table``) and
the ``diagnose`` rules are views of these records, so both agree on every activity.

Rules:

- A connection begins at the first ``ws connect``, then at each ``ws reconnect`` (the bridge's
  decision to replace it; the writer is detached from then on, so nothing of the old connection is
  sent after it); a recording without ``reconnect`` marks (``workbench.tap``) uses its ``connect``s.
  An activity still open when its connection is replaced is ``cut`` (the bridge re-sends it), not
  an activity that never ended; an ActivityEnd with no open activity on its connection is an
  orphan; audio outside an activity is stray.
- Turn, attempt and connection are facts the bridge records on its app-stage ``Sent`` events
  (``turn``, ``attempt``, ``conn``).  An activity on the wire takes them from the app-stage
  ActivityStart that preceded it (one writer: each wire send follows its own app send, before the
  next).  Fallback, for recordings made before those fields or by ``workbench.tap``: the client
  core's ``resend`` events (``Client`` with ``turn``) name the turns re-sent at a reconnect, in
  order, and go to the next activities; any other activity is the next new turn; ``conn`` counts
  the connections begun so far (first rule); ``audio_s`` sums the app-stage audio from 50 ms before
  the ActivityStart to its ActivityEnd.  This is how the turn table was computed before the fields;
  the bridge's own numbers differ only where a connect attempt failed (the bridge counts every
  attempt) and where a re-send follows another back to back (the window takes the other's last chunk).
- An answer belongs to an activity when it came (as read by the application) on the same
  connection after its ActivityEnd and before the connection's next ActivityEnd: its first
  ``model_audio`` and its ``turn_complete``.  ``interrupted_t``: the client core counted the
  answer as stopped by barge-in (``Client`` action ``interrupted`` for this turn, the latest
  attempt on the wire then); such an answer counts as answered then, as the client core counts it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the recording (and pandas) is loaded by the caller
    import pandas as pd

    from workbench.store.recording import Recording

PCM_RATE = 16_000  # the rate of the audio the bridge sends (``n_samples`` of an app-stage audio send)
APP_LEAD_S = 0.05  # fallback only: app-stage sends are logged just before the wire ones


@dataclass(frozen=True)
class Activity:
    """One ActivityStart on the wire and what followed it (session-clock seconds; None: never happened).

    ``turn``: the user turn (1-based); ``attempt``: 1, then 2+ for a re-send after a reconnect;
    ``conn``: the connection that carried it.  ``end_t``: its ActivityEnd; ``cut_t``: its connection
    was replaced while it was open; ``next_start_t``: the next ActivityStart (any connection; inf
    when none).  ``n_audio``, ``audio_sent_from_t``, ``audio_sent_until_t``: the audio messages sent
    inside it; ``audio_s``: seconds of user audio in them.  ``first_audio_t``, ``turn_complete_t``:
    its answer (see the module rules); ``interrupted_t``: when the client core counted the answer as
    stopped by barge-in.
    """

    turn: int
    attempt: int
    conn: int
    start_t: float
    end_t: float | None = None
    cut_t: float | None = None
    next_start_t: float = math.inf
    n_audio: int = 0
    audio_sent_from_t: float | None = None
    audio_sent_until_t: float | None = None
    audio_s: float = 0.0
    first_audio_t: float | None = None
    turn_complete_t: float | None = None
    interrupted_t: float | None = None

    @property
    def interrupted(self) -> bool:
        return self.interrupted_t is not None

    @property
    def answered_t(self) -> float | None:
        """When its answer was complete: its turn_complete, else the barge-in that stopped it (None: unanswered)."""
        return self.turn_complete_t if self.turn_complete_t is not None else self.interrupted_t

    @property
    def answered(self) -> bool:
        """A turn_complete came back for it, or its answer was interrupted by barge-in."""
        return self.answered_t is not None


@dataclass(frozen=True)
class Walk:
    """Everything the walk over the sends found: the activities and what did not fit in one."""

    activities: tuple[Activity, ...]
    orphan_ends: tuple[float, ...]  # ActivityEnd with no open activity on its connection
    stray_audio: tuple[tuple[float, float | None], ...]  # audio outside an activity: (t, preceding ActivityEnd t)
    connects: tuple[float, ...]  # when each connection began (module rules)
    wire: bool  # the sends walked are the wire tap's

    def later_attempts(self, a: Activity) -> list[Activity]:
        """The re-sends of ``a``'s turn after ``a``, oldest first."""
        return [b for b in self.activities if b.turn == a.turn and b.attempt > a.attempt]

    def later_answer(self, a: Activity) -> float | None:
        """When a later attempt of ``a``'s turn was answered (its ``answered_t``), if one was."""
        return next((b.answered_t for b in self.later_attempts(a) if b.answered), None)

    def resent_answer(self, a: Activity) -> float | None:
        """``a`` went unanswered but a re-send of its turn was answered: when (else None)."""
        return None if a.answered else self.later_answer(a)


def connection_starts(ws: pd.DataFrame) -> list[float]:
    """When each connection began: the first ``connect``, then each ``reconnect``; without reconnects, the
    ``connect``s (``ws`` events of a recording)."""
    connects = np.sort(_times(ws, "what", "connect"))
    again = np.sort(_times(ws, "what", "reconnect"))
    if not again.size:
        return connects.tolist()
    first = [float(connects[0])] if connects.size and connects[0] < again[0] else []
    return first + again.tolist()


def activities(rec: Recording) -> tuple[Activity, ...]:
    """The recording's activities in wire order (``walk``)."""
    return walk(rec).activities


def walk(rec: Recording) -> Walk:
    """Walk the recording's sends (module rules)."""
    sends = rec.of_kind("send")
    stage = sends["stage"] if "stage" in sends else None
    wire = sends[stage == "wire"] if stage is not None else sends.iloc[0:0]
    app = sends[stage == "app"] if stage is not None else sends
    stream = wire if len(wire) else app
    connects = connection_starts(rec.of_kind("ws"))
    swaps = connects[1:]

    raw: list[dict[str, Any]] = []
    orphans: list[float] = []
    stray: list[tuple[float, float | None]] = []
    cur: dict[str, Any] | None = None
    last_end: float | None = None
    pending = list(swaps)
    seg = 0
    if "msg" in stream:
        for t, msg in zip(stream["t"].to_numpy(float), stream["msg"], strict=True):
            t = float(t)
            while pending and pending[0] <= t:
                if cur is not None:
                    cur["cut_t"] = pending[0]
                    raw.append(cur)
                cur, last_end = None, None
                pending.pop(0)
                seg += 1
            if msg == "activity_start":
                if cur is not None:
                    raw.append(cur)
                cur, last_end = {"start_t": t, "seg": seg, "n_audio": 0}, None
            elif msg == "activity_end":
                if cur is None:
                    orphans.append(t)
                else:
                    cur["end_t"] = t
                    raw.append(cur)
                    cur = None
                last_end = t
            elif msg == "audio":
                if cur is None:
                    stray.append((t, last_end))
                else:
                    cur["n_audio"] += 1
                    cur.setdefault("audio_sent_from_t", t)
                    cur["audio_sent_until_t"] = t
    if cur is not None:
        raw.append(cur)

    if not _label_from_fields(raw, app):
        _label_by_inference(raw, rec)
    _answers(raw, rec, swaps)
    _audio_seconds(raw, app, swaps)
    _interruptions(raw, rec)
    acts = []
    for i, r in enumerate(raw):
        nxt = raw[i + 1]["start_t"] if i + 1 < len(raw) else math.inf
        acts.append(Activity(
            turn=r["turn"], attempt=r["attempt"], conn=r["conn"], start_t=r["start_t"], end_t=r.get("end_t"),
            cut_t=r.get("cut_t"), next_start_t=nxt, n_audio=r["n_audio"],
            audio_sent_from_t=r.get("audio_sent_from_t"), audio_sent_until_t=r.get("audio_sent_until_t"),
            audio_s=r["audio_s"], first_audio_t=r.get("first_audio_t"), turn_complete_t=r.get("turn_complete_t"),
            interrupted_t=r.get("interrupted_t")))
    return Walk(tuple(acts), tuple(orphans), tuple(stray), tuple(connects), bool(len(wire)))


def _label_from_fields(raw: list[dict[str, Any]], app: pd.DataFrame) -> bool:
    """Turn, attempt and connection from the app-stage ActivityStart before each activity; False when the
    recording does not have them (the fallback labels it)."""
    if not raw or not {"msg", "turn", "attempt", "conn"} <= set(app.columns):
        return False
    starts = app[(app["msg"] == "activity_start") & app["turn"].notna()]
    t = starts["t"].to_numpy(float)
    if not t.size:
        return False
    idx = np.searchsorted(t, [r["start_t"] for r in raw], side="right") - 1
    if (idx < 0).any():
        return False
    turn, attempt, conn = (starts[c].to_numpy() for c in ("turn", "attempt", "conn"))
    for r, i in zip(raw, idx, strict=True):
        r["turn"], r["attempt"], r["conn"] = int(turn[i]), int(attempt[i]), int(conn[i])
    return True


def _label_by_inference(raw: list[dict[str, Any]], rec: Recording) -> None:
    """The fallback (module rules): re-sent turns from the client core's ``resend`` events, else the next turn."""
    resends: list[tuple[float, list[int]]] = []  # one group per reconnect: when, and which user turns, in order
    for t, n in _client_turns(rec, "resend"):
        if n < 1:
            continue  # the greeting (turn 0) is no activity
        if resends and resends[-1][0] == t:
            resends[-1][1].append(n)
        else:
            resends.append((t, [n]))
    queued: list[int] = []
    attempts: dict[int, int] = {}
    next_turn = 1
    for r in raw:
        while resends and resends[0][0] <= r["start_t"]:
            queued += resends.pop(0)[1]
        turn = queued.pop(0) if queued else next_turn
        next_turn = max(next_turn, turn + 1)
        attempts[turn] = attempts.get(turn, 0) + 1
        r["turn"], r["attempt"], r["conn"] = turn, attempts[turn], r["seg"] + 1


def _answers(raw: list[dict[str, Any]], rec: Recording, swaps: list[float]) -> None:
    srv = rec.of_kind("server")
    if "stage" in srv:
        srv = srv[srv["stage"] == "app"]
    audio_t = _times(srv, "msg", "model_audio")
    complete_t = _times(srv, "msg", "turn_complete")
    for i, r in enumerate(raw):
        seg_end = swaps[r["seg"]] if r["seg"] < len(swaps) else math.inf
        later = [b["end_t"] for b in raw[i + 1:] if b["seg"] == r["seg"] and b.get("end_t") is not None]
        hi = min(later[0] if later else math.inf, seg_end)
        lo = r.get("end_t", math.inf)
        complete = _first_between(complete_t, lo, hi + 1e-9)
        first = _first_between(audio_t, lo, (complete if complete is not None else hi) + 1e-9)
        r["turn_complete_t"], r["first_audio_t"] = complete, first


def _audio_seconds(raw: list[dict[str, Any]], app: pd.DataFrame, swaps: list[float]) -> None:
    """Seconds of user audio (PCM samples of the app-stage audio sends, not JSON bytes) in each activity."""
    audio = app[app["msg"] == "audio"] if "msg" in app else app.iloc[0:0]
    if not len(audio) or "n_samples" not in audio:
        for r in raw:
            r["audio_s"] = 0.0
        return
    t = audio["t"].to_numpy(float)
    n = audio["n_samples"].to_numpy(float)
    n = np.where(np.isnan(n), 0.0, n)
    tagged = {"turn", "attempt"} <= set(audio.columns) and audio["turn"].notna().any()
    if tagged:
        turn, attempt = audio["turn"].to_numpy(float), audio["attempt"].to_numpy(float)
    for r in raw:
        if tagged:
            sel = (turn == r["turn"]) & (attempt == r["attempt"])
        else:
            seg_end = swaps[r["seg"]] if r["seg"] < len(swaps) else math.inf
            hi = r.get("end_t", seg_end)
            sel = (t >= r["start_t"] - APP_LEAD_S) & (t <= hi)
        r["audio_s"] = float(n[sel].sum()) / PCM_RATE


def _interruptions(raw: list[dict[str, Any]], rec: Recording) -> None:
    for t, n in _client_turns(rec, "interrupted"):  # the attempt of turn n on the wire when the barge-in came
        hit = [r for r in raw if r["turn"] == n and r["start_t"] <= t]
        if hit:
            hit[-1].setdefault("interrupted_t", t)


def _client_turns(rec: Recording, action: str) -> list[tuple[float, int]]:
    """The client core's ``client`` events of one action that name a turn: (t, turn), in recording order."""
    cl = rec.of_kind("client")
    if not len(cl) or not {"action", "turn"} <= set(cl.columns):
        return []
    rows = cl[(cl["action"] == action) & cl["turn"].notna()]
    return [(float(t), int(n)) for t, n in zip(rows["t"], rows["turn"], strict=True)]


def _times(df: pd.DataFrame, col: str, value: str) -> np.ndarray:
    if col not in df or not len(df):
        return np.array([])
    return df[df[col] == value]["t"].to_numpy(float)


def _first_between(times: np.ndarray, lo: float, hi: float) -> float | None:
    sel = times[(times >= lo) & (times < hi)]
    return float(sel[0]) if sel.size else None
