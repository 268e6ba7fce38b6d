"""One timeline figure of a session: mic, level vs thresholds, turn state, messages, server, websocket.

Why one figure with a shared x axis (session clock, seconds): every failure in DESIGN.md §3 is a
question of *order in time* across stages (speech ended, ActivityEnd left, a pong never came).
Dense event streams are drawn as rugs and row markers with a legend; text labels (turn numbers,
transcripts joined into utterances, close codes, client decisions) are placed by their measured
extents so that none overlaps another or leaves its panel (cut with an ellipsis, or left out when
there is no room).  Rows with nothing in them are left out.

matplotlib is imported inside functions so that ``workbench --help`` stays fast; figures are made
with ``matplotlib.figure.Figure`` (no pyplot state), so they render headless (Agg) anywhere.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.analysis.export import detector_turns, recorded_params
from workbench.core.params import TurnParams
from workbench.core.pcm import MIC_RATE, MODEL_RATE

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from workbench.analysis.replay import Turn
    from workbench.store.recording import Recording

LEVEL_WIN_S = 0.02  # level panel resolution: the detector's frame size
MAX_WAVE_POINTS = 4000  # envelope buckets; a screen cannot show more
MAX_LABEL_CHARS = 48  # a longer label is cut, ending in an ellipsis
LABEL_PT = 7.0  # label font size (points)
LABEL_GAP_PT = 3.0  # between a label and its marker, and between neighbouring labels
JOIN_TRANSCRIPT_S = 1.5  # transcription fragments closer than this are one utterance on the plot
LAG_NOTE_MS = 50.0  # event-loop lag at or above this is named in the legend (it starts to delay audio)
PANELS = ("wave", "level", "turns", "sent", "server", "ws")

# Row positions inside the categorical panels (y ticks carry the names).
TURN_ROWS = {"speech (live VAD)": 3, "turn open (live)": 2, "speech (replay)": 1, "turn open (replay)": 0}
# A recording of the user's own bridge (``workbench.io.tap``): the live rows are theirs, the replay is the workbench's.
THEIR_ROWS = {"speech (live VAD)": "their VAD (speech)", "turn open (live)": "their turn (ActivityStart..End)",
              "speech (replay)": "workbench detector (speech)", "turn open (replay)": "workbench detector (turn)"}
SENT_ROWS = {"audio": 2, "activity": 1, "other": 0}
SERVER_ROWS = {"model audio": 5, "transcript": 4, "turn": 3, "tool / go_away": 2, "session": 1, "error / watchdog": 0}
WS_ROWS = {"ping": 2, "pong": 1, "close / connect": 0}


@dataclass(frozen=True)
class _Label:
    """A text waiting for a place beside its marker: (t, y) in data units of ``panel``, y a row position."""

    panel: str
    t: float
    y: float
    text: str
    color: str


def _mpl() -> Any:
    """Import matplotlib with Agg when there is no display (headless CI, SSH)."""
    import os

    import matplotlib

    if not os.environ.get("DISPLAY") and not os.environ.get("MPLBACKEND") and "inline" not in matplotlib.get_backend():
        matplotlib.use("Agg")
    return matplotlib


def level_db(samples: np.ndarray, rate: int, win_s: float = LEVEL_WIN_S) -> tuple[np.ndarray, np.ndarray]:
    """RMS level per window in dBFS (-120 floor), and each window's start offset in seconds."""
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    n = max(1, round(rate * win_s))
    k = x.shape[0] // n
    if k == 0:
        return np.zeros(0), np.zeros(0)
    w = x[: k * n].reshape(k, n)
    ms = np.einsum("ij,ij->i", w, w) / n
    return np.arange(k) * n / rate, np.maximum(10 * np.log10(np.maximum(ms, 1e-12)), -120.0)


def envelope(samples: np.ndarray, rate: int, t0: float, buckets: int = MAX_WAVE_POINTS
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t, min, max) per bucket: a long waveform drawn as its envelope costs the same as a short one."""
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    if x.size <= 2 * buckets:
        t = t0 + np.arange(x.size) / rate
        return t, x, x
    per = x.size // buckets
    k = x.size // per
    w = x[: k * per].reshape(k, per)
    return t0 + (np.arange(k) * per + per / 2) / rate, w.min(axis=1), w.max(axis=1)


def _in_range(df: pd.DataFrame, lo: float, hi: float, col: str = "t") -> pd.DataFrame:
    return df[(df[col] >= lo) & (df[col] <= hi)] if len(df) else df


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    import pandas as pd

    return df[name] if name in df else pd.Series([None] * len(df), index=df.index, dtype=object)


class TimelinePlot:
    """A persistent timeline: the tuning panel keeps the waveform and redraws only turns and thresholds."""

    def __init__(self, rec: Recording | None = None, *, mic: np.ndarray | None = None, mic_rate: int = MIC_RATE,
                 mic_start_t: float = 0.0, t_range: tuple[float, float] | None = None,
                 replay_turns: Sequence[Turn] | None = None, replay_offset_s: float | None = None,
                 params: TurnParams | None = None, fig: Figure | None = None, width_in: float = 14.0,
                 title: str | None = None) -> None:
        _mpl()
        from matplotlib.figure import Figure

        self.rec = rec
        self.their = rec is not None and rec.meta.get("recorder") == "tap"  # a tapped bridge: its VAD is theirs
        if rec is not None and mic is None:
            mic, mic_rate, mic_start_t = rec.mic, rec.mic_rate, rec.mic_start_t
        self.mic = np.zeros(0, np.float32) if mic is None else np.asarray(mic, dtype=np.float32).reshape(-1)
        self.mic_rate = mic_rate
        self.mic_start_t = mic_start_t
        # Replay turns are in mic media time: shift them onto the session clock.
        self.replay_offset_s = mic_start_t if replay_offset_s is None else replay_offset_s
        if params is None and rec is not None:
            params = recorded_params(rec)
        self.params = params
        events = rec.events if rec is not None else None
        lo, hi = self._full_range(events)
        if t_range is not None:
            a, b = float(t_range[0]), float(t_range[1])
            if not (np.isfinite(a) and np.isfinite(b) and b > a):
                raise ValueError(f"bad time range {a:g}..{b:g}: need FROM < TO (seconds)")
            lo, hi = a, b
        self.t_range = (lo, hi)
        self.panels = list(PANELS if rec is not None else PANELS[:3])
        ratios = {"wave": 1.6, "level": 1.4, "turns": 1.0, "sent": 0.8, "server": 1.5, "ws": 0.9}
        if fig is None:
            fig = Figure(figsize=(width_in, 1.35 * sum(ratios[p] for p in self.panels) + 0.8), layout="constrained")
        self.fig = fig
        axs = fig.subplots(len(self.panels), 1, sharex=True,
                           gridspec_kw={"height_ratios": [ratios[p] for p in self.panels]})
        self.axes: dict[str, Axes] = dict(zip(self.panels, np.atleast_1d(axs), strict=True))
        self.legend_values = True  # threshold values in the legend (off when the legend is drawn once)
        self._turn_artists: list[Any] = []
        self._threshold_artists: list[Any] = []
        self._labels: list[_Label] = []
        # Row positions per categorical panel; empty rows are dropped after drawing (``_compact``).
        self.rows: dict[str, dict[str, float]] = {"turns": {}, "sent": dict(SENT_ROWS), "server": dict(SERVER_ROWS),
                                                  "ws": dict(WS_ROWS)}

        self._draw_wave()
        self._draw_level()
        self._setup_turns()
        if rec is not None:
            self._draw_live_turns()
            self._draw_sent()
            self._draw_server()
            self._draw_ws()
        self._draw_gaps()
        self.set_turns(replay_turns)
        self.set_thresholds(params)
        # The replay rows stay when replay turns are (or will be) drawn: the tuning panel sets them later.
        keep = ("speech (replay)", "turn open (replay)") if rec is None or replay_turns is not None else ()
        for panel in ("turns", "sent", "server", "ws"):
            if panel in self.axes:
                self._compact(panel, keep if panel == "turns" else ())
        last = self.axes[self.panels[-1]]
        last.set_xlim(lo, hi)
        last.set_xlabel("session time (s)" if rec is not None else "time (s)")
        if title is None and rec is not None:
            title = f"{rec.path.name}" + ("  (cut short)" if rec.cut_short else "")
        if title:
            fig.suptitle(title)
        for ax in self.axes.values():
            ax.grid(axis="x", alpha=0.3)
        self._place_labels()

    # --- layout helpers ---------------------------------------------------------------------

    def _full_range(self, events: pd.DataFrame | None) -> tuple[float, float]:
        lo, hi = np.inf, -np.inf
        if self.mic.size:
            lo, hi = self.mic_start_t, self.mic_start_t + self.mic.size / self.mic_rate
        if events is not None and len(events):
            lo, hi = min(lo, float(events["t"].min())), max(hi, float(events["t"].max()))
        if not np.isfinite(lo) or hi <= lo:
            return 0.0, 1.0
        pad = 0.01 * (hi - lo)
        return lo - pad, hi + pad

    @staticmethod
    def _rows(ax: Axes, rows: dict[str, float]) -> None:
        if not rows:
            ax.set_yticks([])
            ax.set_ylim(-0.7, 0.7)
            ax.text(0.5, 0.5, "no events", transform=ax.transAxes, ha="center", va="center", color="grey")
            return
        ax.set_yticks(list(rows.values()), list(rows.keys()), fontsize="small")
        ax.set_ylim(min(rows.values()) - 0.7, max(rows.values()) + 0.7)

    def _compact(self, panel: str, keep: Sequence[str] = ()) -> None:
        """Leave out the rows of ``panel`` that nothing was drawn in, moving the artists onto the remaining rows.

        Why after drawing: each panel's drawing code stays one pass over its events; which rows it used is read
        back from the artists in data coordinates (a row's artists sit within half a row of its position).
        """
        ax = self.axes[panel]
        rows = self.rows[panel]
        artists = [a for a in [*ax.lines, *ax.collections] if a.get_transform() is ax.transData]
        # Scatter markers (the end model's scores) sit at data offsets; their paths are the marker's shape.
        scatters = [a for a in ax.collections if a.get_offset_transform() is ax.transData and len(a.get_offsets())
                    and a not in artists]
        texts = [a for a in ax.texts if a.get_transform() is ax.transData]

        def ys(a: Any) -> np.ndarray:
            if hasattr(a, "get_ydata"):
                return np.asarray(a.get_ydata(), dtype=float)
            paths = a.get_paths()
            return np.concatenate([p.vertices[:, 1] for p in paths]) if paths else np.zeros(0)

        def row_of(y: float) -> str | None:
            if not rows:
                return None
            name, pos = min(rows.items(), key=lambda kv: (abs(y - kv[1]), kv[1]))  # nearest row
            return name if abs(y - pos) <= 0.7 else None

        used = set(keep) & set(rows)
        for a in artists:
            used.update(r for r in map(row_of, ys(a)) if r is not None)
        for a in scatters:
            used.update(r for r in map(row_of, np.asarray(a.get_offsets())[:, 1]) if r is not None)
        rank = {n: float(i) for i, n in enumerate(sorted(used, key=lambda n: rows[n]))}
        new = {n: rank[n] for n in rows if n in used}  # the panel's own order of rows (top first), closed up

        def move(y: np.ndarray) -> np.ndarray:
            out = np.array(y, dtype=float)
            for i, v in enumerate(out):
                r = row_of(v)
                if r is not None and r in new:
                    out[i] = new[r] + (v - rows[r])
            return out

        for a in artists:
            if hasattr(a, "get_ydata"):
                a.set_ydata(move(a.get_ydata()))
            else:
                for p in a.get_paths():
                    p.vertices[:, 1] = move(p.vertices[:, 1])
                a.stale = True
        for a in scatters:
            off = np.array(a.get_offsets(), dtype=float)
            off[:, 1] = move(off[:, 1])
            a.set_offsets(off)
        for a in texts:
            x, y = a.get_position()
            a.set_position((x, float(move(np.array([y]))[0])))
        self._labels = [_Label(lb.panel, lb.t, float(move(np.array([lb.y]))[0]), lb.text, lb.color)
                        if lb.panel == panel else lb for lb in self._labels]
        self.rows[panel] = new
        shown = {THEIR_ROWS.get(n, n) if self.their else n: v for n, v in new.items()}
        self._rows(ax, shown)

    @staticmethod
    def _legend(ax: Axes, x: float = 1.005) -> None:
        handles, labels = ax.get_legend_handles_labels()
        seen: dict[str, Any] = {}
        for h, lab in zip(handles, labels, strict=True):
            if not lab.startswith("_"):
                seen.setdefault(lab, h)
        if seen:
            ax.legend(seen.values(), seen.keys(), loc="upper left", bbox_to_anchor=(x, 1.0), fontsize="small",
                      frameon=False, borderaxespad=0)

    def _events(self, kind: str) -> pd.DataFrame:
        assert self.rec is not None
        lo, hi = self.t_range
        return _in_range(self.rec.of_kind(kind), lo, hi)

    def _texts(self, panel: str, ts: Sequence[float], y: float, texts: Sequence[str], color: str) -> None:
        """Queue labels beside markers; ``_place_labels`` puts them where they collide with nothing."""
        self._labels += [_Label(panel, float(t), float(y), str(s), color) for t, s in zip(ts, texts, strict=True)]

    def _place_labels(self) -> None:
        """Place every queued label so that no two overlap and none leaves its panel; cut or drop the rest.

        Why measured: a label's width is known only in pixels, the panel's only after layout.  The layout is
        run first (labels are kept out of it, so it does not move afterwards); then, per panel, labels in time
        order take the first free slot (above or below their row, starting at or ending at their marker),
        shortened with an ellipsis until one fits.  A label with no room even when short is left out: its
        marker and the legend still say what happened.
        """
        if not self._labels:
            return
        from matplotlib.backends.backend_agg import RendererAgg
        from matplotlib.font_manager import FontProperties

        fig = self.fig
        engine = fig.get_layout_engine()
        if engine is not None:
            engine.execute(fig)
        dpi = fig.dpi
        measure = RendererAgg(10, 10, dpi)
        prop = FontProperties(size=LABEL_PT)
        px = dpi / 72.0
        lo, hi = self.t_range
        by_panel: dict[str, list[_Label]] = {}
        for lb in self._labels:
            by_panel.setdefault(lb.panel, []).append(lb)
        for panel, labels in by_panel.items():
            ax = self.axes[panel]
            pos = ax.get_position()
            w_px, h_px = pos.width * fig.bbox.width, pos.height * fig.bbox.height
            y0, y1 = ax.get_ylim()
            placed: list[tuple[float, float, float, float]] = []
            gap = LABEL_GAP_PT * px
            for lb in sorted(labels, key=lambda x: x.t):
                if not lo <= lb.t <= hi:
                    continue
                xm = (lb.t - lo) / (hi - lo) * w_px
                ym = (lb.y - y0) / (y1 - y0) * h_px
                spot = self._free_spot(lb.text, xm, ym, w_px, h_px, placed, gap, lambda s: measure
                                       .get_text_width_height_descent(s, prop, ismath=False))
                if spot is None:
                    continue
                text, (bx0, by0, bx1, by1), ha, va = spot
                placed.append((bx0 - gap, by0, bx1 + gap, by1))
                ax.annotate(text, (lb.t, lb.y), xytext=((gap if ha == "left" else -gap) / px,
                                                        (gap if va == "bottom" else -gap) / px),
                            textcoords="offset points", fontsize=LABEL_PT, color=lb.color, ha=ha, va=va,
                            annotation_clip=False, in_layout=False)

    @staticmethod
    def _free_spot(text: str, xm: float, ym: float, w_px: float, h_px: float,
                   placed: Sequence[tuple[float, float, float, float]], gap: float, size: Any
                   ) -> tuple[str, tuple[float, float, float, float], str, str] | None:
        """The first slot (text, pixel box, ha, va) for a label at marker (xm, ym) that overlaps nothing placed."""
        text = " ".join(text.split())
        if len(text) > MAX_LABEL_CHARS:
            text = text[: MAX_LABEL_CHARS - 1].rstrip() + "\u2026"
        candidates = [text]
        n = len(text)
        while n > 6:
            n = int(n * 0.75)
            candidates.append(text[: n - 1].rstrip() + "\u2026")
        for cand in candidates:
            w, h, d = size(cand)
            for va in ("bottom", "top"):
                by0 = ym + gap if va == "bottom" else ym - gap - h
                by1 = by0 + h
                if by0 < 0 or by1 > h_px:
                    continue
                for ha in ("left", "right"):
                    bx0 = xm + gap if ha == "left" else xm - gap - w
                    bx1 = bx0 + w
                    if bx0 < 0 or bx1 > w_px:
                        continue
                    if all(bx1 <= a0 or bx0 >= a1 or by1 <= b0 or by0 >= b1 for a0, b0, a1, b1 in placed):
                        return cand, (bx0, by0, bx1, by1), ha, va
        return None

    # --- panels -------------------------------------------------------------------------------

    def _draw_wave(self) -> None:
        ax = self.axes["wave"]
        lo, hi = self.t_range
        i0 = max(0, int((lo - self.mic_start_t) * self.mic_rate))
        i1 = max(i0, min(self.mic.size, int(np.ceil((hi - self.mic_start_t) * self.mic_rate)) + 1))
        seg = self.mic[i0:i1]
        if seg.size:
            t, mn, mx = envelope(seg, self.mic_rate, self.mic_start_t + i0 / self.mic_rate)
            ax.fill_between(t, mn, mx, color="tab:blue", lw=0.4, label="mic (min/max envelope)")
            peak = float(max(np.abs(mn).max(), np.abs(mx).max(), 1e-3))
            ax.set_ylim(-1.1 * peak, 1.1 * peak)
        else:
            ax.text(0.5, 0.5, "no mic audio", transform=ax.transAxes, ha="center", va="center", color="grey")
        ax.set_ylabel("mic\n(full scale)")

    def _draw_level(self) -> None:
        ax = self.axes["level"]
        lo, hi = self.t_range
        i0 = max(0, int((lo - self.mic_start_t) * self.mic_rate))
        i1 = max(i0, min(self.mic.size, int(np.ceil((hi - self.mic_start_t) * self.mic_rate)) + 1))
        t, db = level_db(self.mic[i0:i1], self.mic_rate)
        if t.size:
            ax.step(self.mic_start_t + i0 / self.mic_rate + t, db, where="post", color="tab:blue", lw=0.8,
                    label=f"level, {LEVEL_WIN_S * 1000:.0f} ms RMS")
            ax.set_ylim(max(-100.0, float(db.min()) - 5), min(5.0, float(db.max()) + 10))
        else:
            ax.set_ylim(-100, 0)
        if self.rec is not None:
            vad = self._events("vad")
            if len(vad) and "level_db" in vad:
                for dec, marker, color in (("speech_start", "^", "tab:green"), ("speech_end", "v", "tab:red")):
                    d = vad[vad["decision"] == dec]
                    if len(d):
                        ax.plot(d["t"], d["level_db"].fillna(-100), ls="none", marker=marker, color=color, ms=6,
                                label=f"{'their' if self.their else 'live'} VAD {dec}")
        ax.set_ylabel("level\n(dBFS)")

    def _setup_turns(self) -> None:
        ax = self.axes["turns"]
        rows = TURN_ROWS if self.rec is not None else {k: v for k, v in TURN_ROWS.items() if "replay" in k}
        self.rows["turns"] = {k: float(v) for k, v in rows.items()}
        self._rows(ax, {THEIR_ROWS[k]: v for k, v in rows.items()} if self.their else rows)

    def _draw_live_turns(self) -> None:
        if self.their:
            self._draw_their_turns()
            return
        ax = self.axes["turns"]
        vad = self.rec.of_kind("vad") if self.rec is not None else None
        if vad is None or not len(vad):
            return
        speech, open_ = [], []
        start = None
        for row in vad.itertuples(index=False):
            if row.decision == "speech_start":
                start = row
            elif row.decision == "speech_end" and start is not None:
                m0 = getattr(start, "media_t", None)
                m1 = getattr(row, "media_t", None)
                if m0 is not None and m1 is not None and np.isfinite(m0) and np.isfinite(m1):
                    speech.append((m0, max(m1 - m0, 1e-3)))
                open_.append((start.t, max(row.t - start.t, 1e-3)))
                start = None
        if start is not None:  # a turn still open when the recording ended
            open_.append((start.t, max(self._full_range(self.rec.events)[1] - start.t, 1e-3)))
        ax.broken_barh(speech, (TURN_ROWS["speech (live VAD)"] - 0.35, 0.7), color="tab:green", alpha=0.8,
                       label="speech (detector, media time)")
        ax.broken_barh(open_, (TURN_ROWS["turn open (live)"] - 0.35, 0.7), color="tab:olive", alpha=0.8,
                       label="turn open (ActivityStart..End decided)")
        scores = self.rec.of_kind("end_score")
        if len(scores):
            self._score_marks(ax, list(zip(scores["t"], scores["probability"], scores["complete"], strict=True)),
                              TURN_ROWS["turn open (live)"], "end model (live)")

    def _score_marks(self, ax: Axes, scores: Sequence[tuple[float, float, bool]], y: float, label: str) -> list[Any]:
        """The end-of-turn model's scores: a diamond per score (filled: complete) and its probability."""
        ts = [float(t) for t, _, _ in scores]
        colors = ["tab:red" if c else "white" for _, _, c in scores]
        art = [ax.scatter(ts, [y + 0.45] * len(ts), marker="D", s=28, c=colors, edgecolors="tab:red", zorder=5,
                          label=f"{label}: P(complete), filled = ended")]
        art += [ax.text(t, y + 0.62, f"{p:.2f}", fontsize=7, color="tab:red", ha="center", va="bottom")
                for t, p, _ in scores]
        return art

    def _draw_their_turns(self) -> None:
        """A tapped bridge: speech from its VAD decisions (``rec.vad``), turns from the activity signals it sent."""
        assert self.rec is not None
        ax = self.axes["turns"]
        end = self._full_range(self.rec.events)[1]

        def spans(times: list[tuple[float, bool]]) -> list[tuple[float, float]]:
            out, start = [], None
            for t, opens in times:
                if opens and start is None:
                    start = t
                elif not opens and start is not None:
                    out.append((start, max(t - start, 1e-3)))
                    start = None
            if start is not None:  # still open when the recording ended
                out.append((start, max(end - start, 1e-3)))
            return out

        vad = self.rec.of_kind("vad")
        if len(vad) and "decision" in vad:
            media = _col(vad, "media_t")
            times = [(float(m) if m is not None and np.isfinite(m) else float(t), d == "speech_start")
                     for t, m, d in zip(vad["t"], media, vad["decision"], strict=True)]
            ax.broken_barh(spans(times), (TURN_ROWS["speech (live VAD)"] - 0.35, 0.7), color="tab:green", alpha=0.8,
                           label="their VAD: speech_start..speech_end")
        from workbench.analysis.tables import sends

        snd = sends(self.rec)
        if len(snd) and "msg" in snd:
            act = snd[snd["msg"].isin(["activity_start", "activity_end"])]
            signals = [(float(t), m == "activity_start") for t, m in zip(act["t"], act["msg"], strict=True)]
            ax.broken_barh(spans(signals), (TURN_ROWS["turn open (live)"] - 0.35, 0.7), color="tab:olive",
                           alpha=0.8, label="their turn: ActivityStart..End sent")

    def set_turns(self, turns: Sequence[Turn] | None,
                  end_scores: Sequence[tuple[float, float, bool]] | None = None) -> None:
        """Replace the replay's turn bars (the only artists that change when parameters change).

        ``end_scores``: the end-of-turn model's ``(t, probability, complete)`` in replay time, drawn above.
        """
        for a in self._turn_artists:
            a.remove()
        self._turn_artists = []
        if turns is None:
            return
        rows = self.rows["turns"]
        if "speech (replay)" not in rows:
            raise ValueError("this timeline was drawn without replay rows: pass replay_turns when making it")
        if end_scores:
            off0 = self.replay_offset_s
            self._turn_artists += self._score_marks(self.axes["turns"], [(t + off0, p, c) for t, p, c in end_scores],
                                                    rows["turn open (replay)"], "end model (replay)")
        ax = self.axes["turns"]
        off = self.replay_offset_s
        speech = [(t.speech_start + off, max(t.speech_end - t.speech_start, 1e-3)) for t in turns]
        open_ = [(t.activity_start + off, max(t.activity_end - t.activity_start, 1e-3)) for t in turns]
        ends = [t.activity_end + off for t in turns]
        who = "workbench detector: " if self.their else ""
        self._turn_artists += [
            ax.broken_barh(speech, (rows["speech (replay)"] - 0.35, 0.7), color="tab:purple", alpha=0.8,
                           label=f"{who}speech (replay)"),
            ax.broken_barh(open_, (rows["turn open (replay)"] - 0.35, 0.7), color="tab:pink", alpha=0.8,
                           label=f"{who}turn open (replay)"),
        ]
        if ends:
            (line,) = ax.plot(ends, [rows["turn open (replay)"]] * len(ends), ls="none", marker="|", ms=14,
                              mew=2, color="black", label="ActivityEnd (replay)")
            self._turn_artists.append(line)
        self._legend(ax)

    def set_thresholds(self, params: TurnParams | None) -> None:
        """Draw the energy start/stop thresholds on the level panel."""
        for a in self._threshold_artists:
            a.remove()
        self._threshold_artists = []
        self.params = params
        if params is None or params.scorer != "energy":
            self._legend(self.axes["level"])
            return
        ax = self.axes["level"]
        self._threshold_artists = [
            ax.axhline(params.start_db, color="tab:green", ls="-", lw=1,
                       label=f"start_db {params.start_db:g}" if self.legend_values else "start_db"),
            ax.axhline(params.stop_db, color="tab:red", ls="--", lw=1,
                       label=f"stop_db {params.stop_db:g}" if self.legend_values else "stop_db"),
        ]
        self._legend(ax)

    def _draw_gaps(self) -> None:
        if self.rec is None:
            return
        gaps = self.rec.of_kind("frame_gap")
        lo, hi = self.t_range
        if not len(gaps):
            return
        gaps = gaps[(gaps["t"] >= lo) & (gaps["start_t"] <= hi)]
        frames = self.rec.of_kind("frame")
        kinds = [self._gap_kind(frames, g.start_t, g.t) for g in gaps.itertuples(index=False)]
        # An expected pause (the sender sent nothing: silence under DTX) is a quiet tint; a stall is red hatching.
        style = {"dtx": ({"color": "0.6", "alpha": 0.15, "lw": 0}, "no packets: sender silent (DTX, expected)"),
                 "stall": ({"facecolor": "tab:red", "alpha": 0.25, "hatch": "//", "edgecolor": "tab:red", "lw": 0},
                           "frames stalled (media time went on)"),
                 "unknown": ({"color": "grey", "alpha": 0.25, "hatch": "//", "lw": 0}, "frame gap (no frames arrived)")}
        for name in ("wave", "turns"):
            ax = self.axes[name]
            seen: set[str] = set()
            for g, k in zip(gaps.itertuples(index=False), kinds, strict=True):
                kw, label = style[k]
                ax.axvspan(g.start_t, g.t, **kw, label="_" if k in seen else label)
                seen.add(k)
            self._legend(ax)

    def _draw_sent(self) -> None:
        ax = self.axes["sent"]
        from workbench.analysis.tables import _wire_or_app

        snd = _wire_or_app(self.rec.of_kind("send")) if self.rec is not None else None
        if snd is not None and len(snd):  # number turns over the whole session, then zoom
            snd = _in_range(snd.assign(n=snd.groupby("msg").cumcount() + 1), *self.t_range)
        stage = str(snd["stage"].iloc[0]) if len(snd) and "stage" in snd else "app"
        if len(snd):
            audio = snd[snd["msg"] == "audio"]
            if len(audio):
                ax.vlines(audio["t"], SENT_ROWS["audio"] - 0.3, SENT_ROWS["audio"] + 0.3, color="tab:blue", lw=0.6,
                          label=f"audio chunk ({len(audio)})")
            for msg, marker, color, label in (("activity_start", ">", "tab:green", "ActivityStart"),
                                              ("activity_end", "s", "tab:red", "ActivityEnd")):
                d = snd[snd["msg"] == msg]
                if len(d):
                    ax.plot(d["t"], [SENT_ROWS["activity"]] * len(d), ls="none", marker=marker, color=color, ms=8,
                            label=label)
                    self._texts("sent", list(d["t"]), SENT_ROWS["activity"],
                                [f"{'start' if msg == 'activity_start' else 'end'} {n}" for n in d["n"]],
                                color)
            for msg, marker, color in (("client_content", "D", "tab:purple"), ("tool_response", "P", "tab:orange")):
                d = snd[snd["msg"] == msg]
                if len(d):
                    ax.plot(d["t"], [SENT_ROWS["other"]] * len(d), ls="none", marker=marker, color=color, ms=7,
                            label=msg)
        self._rows(ax, SENT_ROWS)
        ax.set_ylabel(f"sent\n({stage})")
        self._legend(ax)

    def _draw_server(self) -> None:
        ax = self.axes["server"]
        srv = self._events("server")
        if len(srv) and "stage" in srv:
            srv = srv[srv["stage"] == "app"] if (srv["stage"] == "app").any() else srv
        if len(srv):
            audio = srv[srv["msg"] == "model_audio"]
            if len(audio):
                ax.broken_barh(self._audio_spans(audio), (SERVER_ROWS["model audio"] - 0.3, 0.6), color="tab:orange",
                               alpha=0.85, label="model audio (arrival, 24 kHz duration)")
            tr = srv[srv["msg"].isin(["input_transcription", "output_transcription"])]
            for msg, marker, color in (("input_transcription", "o", "tab:green"),
                                       ("output_transcription", "o", "tab:orange")):
                d = tr[tr["msg"] == msg]
                if len(d):
                    ax.plot(d["t"], [SERVER_ROWS["transcript"]] * len(d), ls="none", marker=marker, mfc="none",
                            color=color, ms=6, label=msg.replace("_", " "))
            if len(tr):
                ts, texts = _utterances(tr)
                self._texts("server", ts, SERVER_ROWS["transcript"], texts, "dimgrey")
            for msg, row, marker, color in (
                ("turn_complete", "turn", "*", "tab:green"), ("generation_complete", "turn", "|", "tab:olive"),
                ("interrupted", "turn", "x", "tab:red"), ("tool_call", "tool / go_away", "P", "tab:purple"),
                ("go_away", "tool / go_away", "X", "tab:red"), ("setup_complete", "session", "o", "tab:blue"),
                ("session_resumption_update", "session", ".", "tab:cyan"), ("usage_metadata", "session", "2", "grey"),
                ("unknown", "session", "?", "black"),
            ):
                d = srv[srv["msg"] == msg]
                if len(d):
                    ax.plot(d["t"], [SERVER_ROWS[row]] * len(d), ls="none", marker=marker if msg != "unknown" else "d",
                            color=color, ms=9 if marker == "*" else 7, label=msg)
        err = self._events("error")
        if len(err):
            ax.plot(err["t"], [SERVER_ROWS["error / watchdog"]] * len(err), ls="none", marker="X", color="red", ms=9,
                    label="error")
            self._texts("server", list(err["t"]), SERVER_ROWS["error / watchdog"],
                        [f"{w}: {m}" for w, m in zip(_col(err, "where"), _col(err, "message"), strict=True)], "red")
        wd = self._events("watchdog")
        if len(wd):
            ax.plot(wd["t"], [SERVER_ROWS["error / watchdog"]] * len(wd), ls="none", marker="h", color="tab:orange",
                    ms=9, label="watchdog fired")
        self._draw_client(ax)
        self._rows(ax, SERVER_ROWS)
        ax.set_ylabel("server\n(app)")
        self._legend(ax)

    def _draw_client(self, ax: Axes) -> None:
        """The client core's decisions: a barge-in on the turn row, labelled with the turn it cut; recovery
        (reconnect, re-send, wait longer, give up) on the error row, labelled with its reason."""
        cl = self._events("client")
        if not len(cl) or "action" not in cl:
            return
        turn = _col(cl, "turn")
        cut = cl[cl["action"] == "interrupted"]
        if len(cut):
            ax.plot(cut["t"], [SERVER_ROWS["turn"] - 0.3] * len(cut), ls="none", marker="v", color="tab:red", ms=8,
                    label="turn interrupted (barge-in)")
            self._texts("server", list(cut["t"]), SERVER_ROWS["turn"] - 0.3,
                        ["greeting interrupted" if n == 0 else f"turn {int(n)} interrupted" for n in turn[cut.index]],
                        "tab:red")
        for action, marker, color in (("reconnect", "o", "tab:orange"), ("resend", ">", "tab:orange"),
                                      ("wait_longer", "|", "tab:olive"), ("give_up", "X", "black")):
            d = cl[cl["action"] == action]
            if len(d):
                ax.plot(d["t"], [SERVER_ROWS["error / watchdog"]] * len(d), ls="none", marker=marker, color=color,
                        ms=8, label=f"client {action.replace('_', ' ')}")
                self._texts("server", list(d["t"]), SERVER_ROWS["error / watchdog"],
                            [f"{action} {r}" for r in _col(d, "reason").fillna("")], color)

    @staticmethod
    def _gap_kind(frames: pd.DataFrame, g0: float, g1: float) -> str:
        """``dtx`` when the media time jumped by about the gap (the sender stopped: silence, DTX, mute; expected),
        ``stall`` when it continued where it left off (frames were delayed), ``unknown`` without media times.

        The same test as ``diagnose`` (``_arrived_late``): a frame's ``pts_s`` is its media time.
        """
        if not len(frames) or "pts_s" not in frames:
            return "unknown"
        t = frames["t"].to_numpy(float)
        pts = frames["pts_s"].to_numpy(float)
        before, after = np.flatnonzero(t <= g0 + 1e-9), np.flatnonzero(t >= g1 - 1e-9)
        if not before.size or not after.size:
            return "unknown"
        # The jitter buffer hands out the frame it held when packets resume, so the jump shows a frame or two in.
        k = after[min(2, after.size - 1)]
        media = float(pts[k] - pts[before[-1]]) - (t[k] - t[after[0]])
        if not np.isfinite(media) or media < 0:  # a new media origin: cannot tell
            return "unknown"
        return "stall" if media < 0.5 * (g1 - g0) else "dtx"

    @staticmethod
    def _audio_spans(audio: pd.DataFrame, rate: int = MODEL_RATE, join_s: float = 0.3) -> list[tuple[float, float]]:
        """Model audio chunks merged into spans: a chunk plays for n_samples / 24 kHz after it arrives."""
        n = _col(audio, "n_samples").fillna(0).to_numpy(float)
        nb = _col(audio, "n_bytes").fillna(0).to_numpy(float)
        dur = np.where(n > 0, n / rate, nb / 2 / rate)
        spans: list[list[float]] = []
        for t, d in zip(audio["t"].to_numpy(float), dur, strict=True):
            if spans and t <= spans[-1][1] + join_s:
                spans[-1][1] = max(spans[-1][1], t + d)
            else:
                spans.append([t, t + d])
        return [(a, max(b - a, 1e-3)) for a, b in spans]

    def _draw_ws(self) -> None:
        ax = self.axes["ws"]
        ws = self._events("ws")
        if len(ws):
            for what, row, marker, color in (("ping", "ping", "^", "tab:blue"),
                                             ("server_ping", "ping", "^", "tab:cyan"),
                                             ("pong", "pong", "v", "tab:green"),
                                             ("connect", "close / connect", "o", "tab:blue"),
                                             ("reconnect", "close / connect", "o", "tab:orange"),
                                             ("close_frame_received", "close / connect", "x", "tab:red"),
                                             ("close", "close / connect", "X", "red")):
                d = ws[ws["what"] == what]
                if len(d):
                    ax.plot(d["t"], [WS_ROWS[row]] * len(d), ls="none", marker=marker, color=color, ms=8 if what !=
                            "close" else 11, label=what.replace("_", " "))
            ts, texts = _close_labels(ws)
            self._texts("ws", ts, WS_ROWS["close / connect"], texts, "red")
            rc = ws[ws["what"] == "reconnect"]
            self._texts("ws", list(rc["t"]), WS_ROWS["close / connect"], ["reconnect"] * len(rc), "tab:orange")
        self._rows(ax, WS_ROWS)
        ax.set_ylabel("websocket")
        lag = self._events("loop_lag")
        if len(lag):
            ax2 = ax.twinx()
            ax2.set_zorder(ax.get_zorder() - 1)  # under the markers, which stay on top
            ax.patch.set_visible(False)
            t, ms = lag["t"].to_numpy(float), lag["lag_ms"].to_numpy(float)
            ax2.fill_between(t, 0, ms, step="post", color="tab:purple", alpha=0.18, lw=0)
            ax2.step(t, ms, where="post", color="tab:purple", lw=1.1)
            ax2.set_ylabel("loop lag (ms)", color="tab:purple", fontsize="small")
            ax2.tick_params(axis="y", colors="tab:purple", labelsize="small")
            peak = float(np.nanmax(ms))
            ax2.set_ylim(0, max(LAG_NOTE_MS, peak * 1.2))
            note = f", max {peak:.0f} ms at {t[int(np.nanargmax(ms))]:.1f} s" if peak >= LAG_NOTE_MS else ""
            ax.plot([], [], color="tab:purple", lw=1.1, label=f"event-loop lag (right axis{note})")
            self._legend(ax, x=1.06)  # clear of the twin axis' ticks and label
            return
        self._legend(ax)


def _utterances(tr: pd.DataFrame) -> tuple[list[float], list[str]]:
    """Transcription fragments joined into utterances (per direction): one label per utterance, at its first
    fragment, instead of a label per word that no placement can keep apart."""
    out: list[tuple[float, str]] = []
    for msg in ("input_transcription", "output_transcription"):
        d = tr[tr["msg"] == msg]
        last_t, parts, start = None, [], 0.0
        for t, text in zip(d["t"].to_numpy(float), _col(d, "text").fillna("").astype(str), strict=True):
            if last_t is not None and t - last_t > JOIN_TRANSCRIPT_S and parts:
                out.append((start, "".join(parts)))
                parts = []
            if not parts:
                start = t
            elif text and not text[0].isspace() and not parts[-1][-1:].isspace():
                text = " " + text
            parts.append(text)
            last_t = t
        if parts:
            out.append((start, "".join(parts)))
    out = [(t, s.strip()) for t, s in sorted(out) if s.strip()]
    return [t for t, _ in out], [s for _, s in out]


def _close_labels(ws: pd.DataFrame) -> tuple[list[float], list[str]]:
    """One label per connection close: the close code and reason, from the close frame received just before our
    own ``close`` event when there was one (two labels for one close would sit on top of each other)."""
    closes = ws[ws["what"].isin(["close", "close_frame_received"])].sort_values("t")
    codes, reasons = _col(closes, "code"), _col(closes, "reason").fillna("")
    out: list[tuple[float, str, str]] = []
    for t, what, c, r in zip(closes["t"].to_numpy(float), closes["what"], codes, reasons, strict=True):
        code = str(int(c)) if c is not None and c == c else ""
        if out and what == "close" and out[-1][1] == "close_frame_received" and t - out[-1][0] <= 1.0:
            t0, _, text = out.pop()
            out.append((t0, "close", text if code == "" else f"close {code} {r}".strip()))
            continue
        out.append((t, what, f"close {code or '(no code)'} {r}".strip()))
    return [t for t, _, _ in out], [s for _, _, s in out]


def timeline(rec: Recording | None = None, *, t_range: tuple[float, float] | None = None,
             replay_turns: Sequence[Turn] | None = None, params: TurnParams | None = None, ax: Any = None,
             mic: np.ndarray | None = None, mic_rate: int = MIC_RATE, mic_start_t: float = 0.0,
             replay_offset_s: float | None = None, title: str | None = None) -> Figure:
    """The session timeline as one matplotlib Figure (panels share the x axis, seconds).

    ``rec=None`` with ``mic`` plots audio alone (waveform, level, replay turns).  ``replay_turns``
    are shifted by ``replay_offset_s`` (default ``mic_start_t``: turns from a file replay of the
    mic are in mic media time; pass 0 for ``replay_recording``'s session-clock turns).  ``params``
    (default: the recording's) gives the level thresholds.  ``ax``: a Figure to draw into (the
    panels need a whole figure, not one Axes).
    """
    if rec is None and mic is None:
        raise ValueError("timeline needs a recording or mic samples")
    fig = ax if ax is not None and hasattr(ax, "subplots") else None
    if ax is not None and fig is None:
        raise ValueError("timeline draws several panels: pass a Figure as ax, not a single Axes")
    return TimelinePlot(rec, mic=mic, mic_rate=mic_rate, mic_start_t=mic_start_t, t_range=t_range,
                        replay_turns=replay_turns, replay_offset_s=replay_offset_s, params=params, fig=fig,
                        title=title).fig


def save_timeline(rec: Recording | str | Path, path: str | Path, t_range: tuple[float, float] | None = None,
                  **kwargs: Any) -> Path:
    """Render the timeline of a recording (object or directory) to an image file."""
    from workbench.store.recording import Recording, load

    if not isinstance(rec, Recording):
        rec = load(rec)
    out = Path(path)
    if not out.parent.exists():
        raise ValueError(f"{out}: directory {out.parent} does not exist")
    fig = timeline(rec, t_range=t_range, **kwargs)
    try:
        fig.savefig(out, dpi=110)
    except ValueError as exc:  # unknown extension: matplotlib's message names the formats
        raise ValueError(f"{out}: {str(exc).splitlines()[0]}") from None
    return out


def register(subparsers: Any) -> None:
    """Add ``workbench plot``."""
    p = subparsers.add_parser(
        "plot", help="draw a recording's timeline (waveform, VAD, messages, server, websocket) to an image",
        description="Draw one figure of a recording on the session clock: mic waveform; level in dBFS with the "
                    "start/stop thresholds; turn state and frame gaps; messages sent (audio rug, ActivityStart/End); "
                    "server events (model audio, transcriptions, turn_complete, tool calls, goAway, errors, "
                    "watchdog); websocket pings, pongs, close codes and event-loop lag.",
        epilog="example: workbench plot recordings/demo-20260101-120000 -o timeline.png --from 5 --to 20",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recording", type=Path, help="recording directory (recordings/<session>)")
    p.add_argument("-o", "--out", type=Path, required=True, help="image file to write (.png, .svg, .pdf)")
    p.add_argument("--from", dest="t_from", type=float, metavar="S", help="start of the view, session seconds")
    p.add_argument("--to", dest="t_to", type=float, metavar="S", help="end of the view, session seconds")
    p.add_argument("--replay", action="store_true",
                   help="also replay the recording through the turn detector with its own params and draw the turns "
                        "(received frames with their arrival times when recorded, else mic.flac as a file); "
                        "always on for a tapped bridge's recording (workbench.io.tap), beside their own VAD")
    p.set_defaults(func=cmd_plot)


def cmd_plot(args: argparse.Namespace) -> int:
    from workbench.store.recording import RecordingError, load

    if not args.recording.exists():
        raise RecordingError(f"{args.recording}: no such recording directory")
    rec = load(args.recording)
    t_range = None
    if args.t_from is not None or args.t_to is not None:
        lo, hi = _rec_range(rec)
        t_range = (args.t_from if args.t_from is not None else lo, args.t_to if args.t_to is not None else hi)
        if not t_range[1] > t_range[0]:
            raise ValueError(f"--from {t_range[0]:g} must be before --to {t_range[1]:g}")
    turns, offset = None, None
    if args.replay or rec.meta.get("recorder") == "tap":  # a tapped bridge: their VAD beside the workbench's
        # the frames as they arrived through the bridge's own mic pipeline (else mic.flac), on the session clock
        turns, offset = detector_turns(rec, recorded_params(rec) or TurnParams()), 0.0
    out = save_timeline(rec, args.out, t_range=t_range, replay_turns=turns, replay_offset_s=offset)
    print(f"wrote {out}")
    return 0


def _rec_range(rec: Recording) -> tuple[float, float]:
    lo = float(rec.events["t"].min()) if len(rec.events) else 0.0
    hi = float(rec.events["t"].max()) if len(rec.events) else 0.0
    if rec.mic.size:
        lo, hi = min(lo, rec.mic_start_t), max(hi, rec.mic_start_t + rec.mic.size / rec.mic_rate)
    return lo, hi
