"""Tidy tables from a recording: the turn table and per-turn latencies.

Columns of ``turn_table`` (seconds on the session clock, NaN where it never happened):

- ``turn``: 1-based user turn (the greeting is not a turn); ``attempt``: 2+ when re-sent after a reconnect
- ``conn``: which websocket connection (1-based) carried it
- ``speech_start``: media time the detector placed the start of speech
- ``activity_start``: ActivityStart left the socket
- ``speech_end``: media time of the last speech before ActivityEnd
- ``activity_end``: ActivityEnd left the socket
- ``first_audio``: first model audio the receive loop got after ActivityEnd
- ``turn_complete``: the turn_complete the receive loop got for it
- ``audio_s``: seconds of user audio sent in the activity
- ``answered``: True when a turn_complete came back (or the answer was interrupted by barge-in)
- ``interrupted``: True when the user spoke over the answer and the server stopped it (``interrupted``)
- ``end_to_audio_ms``, ``end_to_complete_ms``: latencies after ActivityEnd
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from workbench.core.pcm import SENT_RATE
from workbench.store.recording import Recording


def _wire_or_app(df: pd.DataFrame) -> pd.DataFrame:
    """Prefer the wire tap's record; fall back to what the application logged."""
    if "stage" not in df:
        return df
    wire = df[df["stage"] == "wire"]
    return wire if len(wire) else df[df["stage"] == "app"]


def sends(rec: Recording) -> pd.DataFrame:
    """Every client message as it left the socket (or as handed to the SDK when no wire tap ran)."""
    return _wire_or_app(rec.of_kind("send")).reset_index(drop=True)


def server_messages(rec: Recording) -> pd.DataFrame:
    """Every server message the application got, by kind (``model_audio``, ``turn_complete``, ...)."""
    df = rec.of_kind("server")
    if "stage" in df:
        df = df[df["stage"] == "app"]
    return df.reset_index(drop=True)


def _connections(rec: Recording) -> np.ndarray:
    """Session times at which each websocket connection started (one entry per ``ws connect``)."""
    ws = rec.of_kind("ws")
    if len(ws) and "what" in ws:
        t = ws[ws["what"] == "connect"]["t"].to_numpy()
        if t.size:
            return np.concatenate([[-np.inf], t[1:]]) if t[0] > 0 else t
    return np.array([-np.inf])


def _resends(rec: Recording) -> list[tuple[float, list[int]]]:
    """The client core's re-sends (``client`` events, action ``resend``): when, and which user turns, in order.

    Consecutive re-sends at one moment (one reconnect) are one group; turn 0 (the greeting) is not an activity.
    """
    out: list[tuple[float, list[int]]] = []
    for t, n in _client_turns(rec, "resend"):
        if n < 1:
            continue
        if out and out[-1][0] == t:
            out[-1][1].append(n)
        else:
            out.append((t, [n]))
    return out


def _interrupted(rec: Recording) -> list[tuple[float, int]]:
    """Barge-ins: when the client core counted a user turn's answer as interrupted, and which turn."""
    return _client_turns(rec, "interrupted")


def _client_turns(rec: Recording, action: str) -> list[tuple[float, int]]:
    """The client core's ``client`` events of one action that name a turn: (t, turn), in recording order."""
    cl = rec.of_kind("client")
    if not len(cl) or not {"action", "turn"} <= set(cl.columns):
        return []
    rows = cl[(cl["action"] == action) & cl["turn"].notna()]
    return [(float(t), int(n)) for t, n in zip(rows["t"], rows["turn"], strict=True)]


def turn_table(rec: Recording) -> pd.DataFrame:
    """One row per activity on the wire: when speech started, when the signals left, when the answer came.

    An activity re-sent on a new connection after a reconnect is a row of its own with the same
    ``turn`` and ``attempt`` > 1.  An answer belongs to an activity when it came on the same
    connection after its ActivityEnd and before the next ActivityEnd.
    """
    snd = sends(rec)
    srv = server_messages(rec)
    vad = rec.of_kind("vad")
    app = rec.of_kind("send")
    if "stage" in app:
        app = app[app["stage"] == "app"]
    app_audio = app[app["msg"] == "audio"] if len(app) else app  # n_samples: PCM, not JSON bytes
    has_vad = len(vad) and {"decision", "media_t"} <= set(vad.columns)
    vad_starts = vad[vad["decision"] == "speech_start"]["media_t"].to_numpy() if has_vad else np.array([])
    vad_ends = vad[vad["decision"] == "speech_end"]["media_t"].to_numpy() if has_vad else np.array([])
    audio_t = srv[srv["msg"] == "model_audio"]["t"].to_numpy() if len(srv) else np.array([])
    complete_t = srv[srv["msg"] == "turn_complete"]["t"].to_numpy() if len(srv) else np.array([])
    conn_t = _connections(rec)

    acts: list[dict] = []
    if len(snd):
        for row in snd[snd["msg"].isin(["activity_start", "activity_end"])].itertuples():
            if row.msg == "activity_start":
                acts.append({"activity_start": float(row.t), "activity_end": np.nan})
            elif acts and np.isnan(acts[-1]["activity_end"]):
                acts[-1]["activity_end"] = float(row.t)
    resends = _resends(rec)
    pending: list[int] = []
    attempts: dict[int, int] = {}
    next_turn = 1
    for act in acts:
        while resends and resends[0][0] <= act["activity_start"]:
            pending += resends.pop(0)[1]
        turn = pending.pop(0) if pending else next_turn
        next_turn = max(next_turn, turn + 1)
        attempts[turn] = attempts.get(turn, 0) + 1
        act["turn"], act["attempt"] = turn, attempts[turn]
        act["conn"] = int(np.searchsorted(conn_t, act["activity_start"], side="right"))

    rows = []
    for i, act in enumerate(acts):
        a_start, a_end, turn = act["activity_start"], act["activity_end"], act["turn"]
        conn_end = conn_t[act["conn"]] if act["conn"] < len(conn_t) else np.inf
        later = [b["activity_end"] for b in acts[i + 1:]
                 if b["conn"] == act["conn"] and not np.isnan(b["activity_end"])]
        hi = min(later[0] if later else np.inf, conn_end)
        lo = a_end if not np.isnan(a_end) else np.inf
        complete = _first_between(complete_t, lo, hi + 1e-9)
        first_audio = _first_between(audio_t, lo, (complete if not np.isnan(complete) else hi) + 1e-9)
        # App-stage sends are logged just before the wire ones, so the window opens a little early.
        win_hi = a_end if not np.isnan(a_end) else conn_end
        if len(app_audio):
            in_act = app_audio[(app_audio["t"] >= a_start - 0.05) & (app_audio["t"] <= win_hi)]
        else:
            in_act = app_audio
        n_samples = float(in_act["n_samples"].sum()) if len(in_act) and "n_samples" in in_act else 0.0
        rows.append({
            "turn": turn,
            "attempt": act["attempt"],
            "conn": act["conn"],
            "speech_start": vad_starts[turn - 1] if turn - 1 < len(vad_starts) else np.nan,
            "activity_start": a_start,
            "speech_end": vad_ends[turn - 1] if turn - 1 < len(vad_ends) else np.nan,
            "activity_end": a_end,
            "first_audio": first_audio,
            "turn_complete": complete,
            "audio_s": n_samples / SENT_RATE,
        })
    df = pd.DataFrame(rows, columns=["turn", "attempt", "conn", "speech_start", "activity_start", "speech_end",
                                     "activity_end", "first_audio", "turn_complete", "audio_s"])
    df["interrupted"] = False
    for t, n in _interrupted(rec):  # the attempt of turn n that was on the wire when the barge-in came
        sel = df.index[(df["turn"] == n) & (df["activity_start"] <= t)]
        if len(sel):
            df.loc[sel[-1], "interrupted"] = True
    df["answered"] = df["turn_complete"].notna() | df["interrupted"]
    df["end_to_audio_ms"] = (df["first_audio"] - df["activity_end"]) * 1000.0
    df["end_to_complete_ms"] = (df["turn_complete"] - df["activity_end"]) * 1000.0
    return df


def user_turns(rec: Recording) -> pd.DataFrame:
    """One row per user turn: how many times it was sent, and whether any attempt was answered."""
    tt = turn_table(rec)
    if tt.empty:
        return pd.DataFrame(columns=["turn", "attempts", "answered", "turn_complete"])
    g = tt.groupby("turn")
    return pd.DataFrame({"attempts": g["attempt"].max(), "answered": g["answered"].any(),
                         "turn_complete": g["turn_complete"].max()}).reset_index()


def latency_stats(rec: Recording) -> pd.DataFrame:
    """Median, p95 and max of each stage of the turn: speech end -> ActivityEnd -> first audio -> complete."""
    tt = turn_table(rec)
    stages = {
        "speech_end_to_activity_end_ms": (tt["activity_end"] - tt["speech_end"]) * 1000.0,
        "activity_end_to_first_audio_ms": tt["end_to_audio_ms"],
        "activity_end_to_turn_complete_ms": tt["end_to_complete_ms"],
    }
    rows = []
    for name, s in stages.items():
        s = s.dropna()
        rows.append({"stage": name, "n": len(s),
                     "median": s.median() if len(s) else np.nan,
                     "p95": s.quantile(0.95) if len(s) else np.nan,
                     "max": s.max() if len(s) else np.nan})
    return pd.DataFrame(rows).set_index("stage")


def _first_between(times: np.ndarray, lo: float, hi: float) -> float:
    sel = times[(times >= lo) & (times < hi)]
    return float(sel[0]) if sel.size else np.nan


def format_turn_table(tt: pd.DataFrame) -> str:
    """The demo's printed table: one line per turn, times in seconds."""
    header = (f"{'turn':>7}  {'speech start':>12}  {'ActivityEnd sent':>16}  {'first response audio':>20}  "
              f"{'turn_complete':>13}  answered")
    lines = [header, "-" * len(header)]

    def f(x: float) -> str:
        return "-" if pd.isna(x) else f"{x:.2f}"

    for r in tt.itertuples():
        name = f"{r.turn}" if r.attempt == 1 else f"{r.turn} re{r.attempt - 1}"
        retried = ((tt["turn"] == r.turn) & (tt["attempt"] > r.attempt)).any()
        verdict = ("interrupted" if r.interrupted else "yes") if r.answered else ("re-sent" if retried else "NO")
        lines.append(f"{name:>7}  {f(r.speech_start):>12}  {f(r.activity_end):>16}  {f(r.first_audio):>20}  "
                     f"{f(r.turn_complete):>13}  {verdict}")
    return "\n".join(lines)
