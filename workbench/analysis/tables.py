"""Tidy tables from a recording: the turn table and per-turn latencies.

Columns of ``turn_table`` (seconds on the session clock, NaN where it never happened):

- ``turn``: 1-based user turn (the greeting is not a turn); ``attempt``: 2+ when re-sent after a reconnect
- ``conn``: which websocket connection carried it (the bridge's number, as in ``Client.conn``; in older
  recordings the count of connections begun, see ``activities``)
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

from workbench.analysis.activities import activities
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


def turn_table(rec: Recording) -> pd.DataFrame:
    """One row per activity on the wire: when speech started, when the signals left, when the answer came.

    A view of ``activities.walk`` (its rules say which turn, attempt and connection an activity
    carried and which answer is its own): an activity re-sent on a new connection after a
    reconnect is a row of its own with the same ``turn`` and ``attempt`` > 1.
    """
    vad = rec.of_kind("vad")
    has_vad = len(vad) and {"decision", "media_t"} <= set(vad.columns)
    vad_starts = vad[vad["decision"] == "speech_start"]["media_t"].to_numpy() if has_vad else np.array([])
    vad_ends = vad[vad["decision"] == "speech_end"]["media_t"].to_numpy() if has_vad else np.array([])

    def at(times: np.ndarray, turn: int) -> float:
        return float(times[turn - 1]) if 0 < turn <= len(times) else np.nan

    def t(x: float | None) -> float:
        return np.nan if x is None else x

    rows = [{
        "turn": a.turn,
        "attempt": a.attempt,
        "conn": a.conn,
        "speech_start": at(vad_starts, a.turn),
        "activity_start": a.start_t,
        "speech_end": at(vad_ends, a.turn),
        "activity_end": t(a.end_t),
        "first_audio": t(a.first_audio_t),
        "turn_complete": t(a.turn_complete_t),
        "audio_s": a.audio_s,
        "interrupted": a.interrupted,
    } for a in activities(rec)]
    df = pd.DataFrame(rows, columns=["turn", "attempt", "conn", "speech_start", "activity_start", "speech_end",
                                     "activity_end", "first_audio", "turn_complete", "audio_s", "interrupted"])
    df["interrupted"] = df["interrupted"].astype(bool)
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
