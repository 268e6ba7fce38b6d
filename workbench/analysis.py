"""Tidy tables from a recording: the turn table and per-turn latencies.

Columns of ``turn_table`` (seconds on the session clock, NaN where it never happened):

- ``turn``: 1-based activity number (the greeting is not a turn)
- ``speech_start``: media time the detector placed the start of speech
- ``activity_start``: ActivityStart left the socket
- ``speech_end``: media time of the last speech before ActivityEnd
- ``activity_end``: ActivityEnd left the socket
- ``first_audio``: first model audio the receive loop got after ActivityEnd
- ``turn_complete``: the turn_complete the receive loop got for it
- ``audio_s``: seconds of user audio sent in the activity
- ``answered``: True when a turn_complete came back
- ``end_to_audio_ms``, ``end_to_complete_ms``: latencies after ActivityEnd
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .recording import Recording


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
    """One row per activity: when speech started, when the signals left, when the answer came."""
    snd = sends(rec)
    srv = server_messages(rec)
    vad = rec.of_kind("vad")
    starts = snd[snd["msg"] == "activity_start"]["t"].to_numpy() if len(snd) else np.array([])
    ends = snd[snd["msg"] == "activity_end"]["t"].to_numpy() if len(snd) else np.array([])
    app = rec.of_kind("send")
    if "stage" in app:
        app = app[app["stage"] == "app"]
    app_audio = app[app["msg"] == "audio"] if len(app) else app  # n_samples: PCM, not JSON bytes
    vad_starts = vad[vad["decision"] == "speech_start"]["media_t"].to_numpy() if len(vad) else np.array([])
    vad_ends = vad[vad["decision"] == "speech_end"]["media_t"].to_numpy() if len(vad) else np.array([])
    audio_t = srv[srv["msg"] == "model_audio"]["t"].to_numpy() if len(srv) else np.array([])
    complete_t = srv[srv["msg"] == "turn_complete"]["t"].to_numpy() if len(srv) else np.array([])
    rows = []
    for i, a_start in enumerate(starts):
        a_end = ends[i] if i < len(ends) else np.nan
        nxt = starts[i + 1] if i + 1 < len(starts) else np.inf
        after = a_end if not np.isnan(a_end) else np.inf
        first_audio = _first_between(audio_t, after, nxt)
        complete = _first_between(complete_t, after, nxt)
        # App-stage sends are logged just before the wire ones, so the window opens a little early.
        lo = a_start - 0.05
        hi = a_end if not np.isnan(a_end) else np.inf
        in_act = app_audio[(app_audio["t"] >= lo) & (app_audio["t"] <= hi)] if len(app_audio) else app_audio
        n_samples = float(in_act["n_samples"].sum()) if len(in_act) and "n_samples" in in_act else 0.0
        rows.append({
            "turn": i + 1,
            "speech_start": vad_starts[i] if i < len(vad_starts) else np.nan,
            "activity_start": a_start,
            "speech_end": vad_ends[i] if i < len(vad_ends) else np.nan,
            "activity_end": a_end,
            "first_audio": first_audio,
            "turn_complete": complete,
            "audio_s": n_samples / 16_000,
        })
    df = pd.DataFrame(rows, columns=["turn", "speech_start", "activity_start", "speech_end", "activity_end",
                                     "first_audio", "turn_complete", "audio_s"])
    df["answered"] = df["turn_complete"].notna()
    df["end_to_audio_ms"] = (df["first_audio"] - df["activity_end"]) * 1000.0
    df["end_to_complete_ms"] = (df["turn_complete"] - df["activity_end"]) * 1000.0
    return df


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
    header = (f"{'turn':>4}  {'speech start':>12}  {'ActivityEnd sent':>16}  {'first response audio':>20}  "
              f"{'turn_complete':>13}  answered")
    lines = [header, "-" * len(header)]

    def f(x: float) -> str:
        return "-" if pd.isna(x) else f"{x:.2f}"

    for r in tt.itertuples():
        lines.append(f"{r.turn:>4}  {f(r.speech_start):>12}  {f(r.activity_end):>16}  {f(r.first_audio):>20}  "
                     f"{f(r.turn_complete):>13}  {'yes' if r.answered else 'NO'}")
    return "\n".join(lines)
