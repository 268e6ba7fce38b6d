"""The tuning panel: move a slider, see the turns the detector would take on this audio.

Why it is fast enough to drag: each change replays the audio through the one ``TurnDetector`` on a file's
clock (``detect_file``), which scores the whole buffer at once and judges window by window only where
something can happen (tens of milliseconds for 5 minutes with the energy scorer); the figure's static part
(waveform, level) is rendered once and kept as a bitmap, and each change draws only the turn bars and
thresholds on top (blitting).  webrtcvad and Silero score window by window (slower); results are cached per
parameter set.  With the Smart Turn end model (``end_model`` dropdown) the model's
scores are memoised on their exact audio (``endturn.MemoEndModel``), so moving its threshold or the
wait replays without rescoring most windows; each score is drawn above the turn bars with its
probability (filled diamond: it ended the turn).

Everything is plain ipywidgets and testable without a browser: set ``panel.sliders[name].value``,
read ``panel.turns``; ``panel.save_button.click()`` writes the ``--params`` JSON.
"""

from __future__ import annotations

import io
import json
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from workbench.analysis.replay import RATE, Turn, detect_file
from workbench.analysis.sweep import Source, load_source
from workbench.core.params import TurnParams
from workbench.core.turns import DecisionKind

# name: (min, max, step, unit)
SLIDERS: dict[str, tuple[float, float, float, str]] = {
    "start_db": (-90.0, -5.0, 1.0, "dBFS"),
    "stop_db": (-90.0, -5.0, 1.0, "dBFS"),
    "silence_ms": (50.0, 3000.0, 10.0, "ms"),
    "min_speech_ms": (0.0, 1000.0, 10.0, "ms"),
    "pre_roll_ms": (0.0, 2000.0, 10.0, "ms"),
    "max_turn_ms": (2000.0, 120000.0, 1000.0, "ms"),
    "max_silence_ms": (100.0, 10000.0, 100.0, "ms"),
    "end_threshold": (0.05, 0.95, 0.05, "P(complete)"),
}
CHOICES: dict[str, list[str]] = {"scorer": ["energy", "webrtcvad", "silero"], "endpointing": ["fixed", "dynamic"],
                                 "end_model": ["none", "smart-turn"]}
_CACHE_SIZE = 64  # parameter sets whose turns are kept
# Sliders that only the energy scorer reads: webrtcvad and Silero judge speech with their own model and threshold.
ENERGY_ONLY = ("start_db", "stop_db")


class TuningPanel:
    """Sliders over TurnParams, an offline replay on every change, a timeline and a turn table."""

    def __init__(self, source: Any, params: TurnParams | None = None, *,
                 save_path: str | Path = "params.json", width_in: float = 12.0) -> None:
        import ipywidgets as w

        from workbench.store.recording import Recording, load

        params = params or TurnParams()
        params.validate()
        rec = source if isinstance(source, Recording) else None
        if rec is None and not isinstance(source, tuple) and Path(source).is_dir():
            rec = load(source)
        self.source: Source = load_source(rec if rec is not None else source)
        # Replay times are mic media time; on a recording the plot and table use the session clock.
        self.offset_s = rec.mic_start_t if rec is not None else 0.0
        self.params = params
        self.turns: list[Turn] = []
        self.last_update_ms: dict[str, float] = {}
        self._cache: OrderedDict[TurnParams, list[Turn]] = OrderedDict()
        self._busy = False

        self.sliders: dict[str, Any] = {}
        for name, (lo, hi, step, unit) in SLIDERS.items():
            # The panel opens on the parameters it was given: a value outside the usual range widens the range
            # instead of being clipped (a clipped slider would replay other parameters than the caller's).
            value = float(getattr(params, name))
            lo, hi = min(lo, value), max(hi, value)
            s = w.FloatSlider(value=value, min=lo, max=hi, step=step, description=f"{name}",
                              continuous_update=False, readout_format=".2f" if step < 1 else ".0f",
                              style={"description_width": "110px"}, layout=w.Layout(width="420px"))
            s.tooltip = unit
            s.observe(self._on_slider, names="value")
            self.sliders[name] = s
        self.choices: dict[str, Any] = {}
        for name, options in CHOICES.items():
            d = w.Dropdown(options=options, value=getattr(params, name), description=name,
                           style={"description_width": "110px"})
            d.observe(self._on_slider, names="value")
            self.choices[name] = d
        self.scorer = self.choices["scorer"]
        self.end_scores: list[tuple[float, float, bool]] = []  # (t, P(complete), ended) of the current replay
        self._scores: dict[TurnParams, list[tuple[float, float, bool]]] = {}
        self._memo_model: Any = None
        self.message = w.HTML()
        self.stats = w.HTML()
        self.table = w.HTML()
        self.image = w.Image(format="png")
        self.audio = w.Audio(value=_wav_bytes(self.source.samples16k, RATE), format="wav", autoplay=False, loop=False)
        self.save_path = w.Text(value=str(save_path), description="params file",
                                style={"description_width": "110px"}, layout=w.Layout(width="420px"))
        self.save_button = w.Button(description="Save parameters", icon="save",
                                    tooltip="write JSON for `workbench run --params FILE`")
        self.save_button.on_click(self._on_save)

        from workbench.ui.plots import TimelinePlot

        self.plot = TimelinePlot(None, mic=self.source.samples16k, mic_rate=RATE, mic_start_t=self.offset_s,
                                 params=params, width_in=width_in, title=f"{self.source.name}: replay")
        self.plot.legend_values = False  # the legend is blitted once; values are on the sliders
        self._canvas = _agg_canvas(self.plot.fig)
        self._background: Any = None
        self._background_scorer: str | None = None  # the legend differs per scorer: redrawn when it changes

        controls = w.VBox([*self.sliders.values(), *self.choices.values(), w.HBox([self.save_path, self.save_button]),
                           self.message, self.stats])
        self.widget = w.VBox([w.HBox([controls, self.audio]), self.image, self.table])
        self.update()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        """The live panel where widgets render (JupyterLab); elsewhere (a rendered page, nbconvert, GitHub)
        the panel's figure as it is now, so a reader without a kernel still sees what the panel shows."""
        import base64

        bundle = dict(self.widget._repr_mimebundle_(**kwargs))
        bundle["image/png"] = base64.b64encode(self.image.value).decode("ascii")
        return bundle

    # --- reacting to the controls -----------------------------------------------------------

    def _on_slider(self, change: dict[str, Any]) -> None:
        if self._busy:
            return
        self._busy = True
        try:
            owner = change.get("owner")
            start, stop = self.sliders["start_db"], self.sliders["stop_db"]
            note = ""
            if stop.value > start.value:  # the detector needs stop <= start: move the other slider
                if owner is start:
                    stop.value = start.value
                    note = f"stop_db lowered to {start.value:g} (must stay <= start_db)"
                else:
                    stop.value = start.value
                    note = f"stop_db held at start_db {start.value:g} (must stay <= start_db)"
            self.update(note)
        finally:
            self._busy = False

    def current_params(self) -> TurnParams:
        """The parameters the controls show (validated)."""
        d = {**self.params.to_dict(), **{k: float(s.value) for k, s in self.sliders.items()},
             **{k: c.value for k, c in self.choices.items()}}
        return TurnParams.from_dict(d)

    def update(self, note: str = "") -> None:
        """Replay with the controls' parameters and redraw the turns; problems become a message."""
        t0 = time.perf_counter()
        try:
            params = self.current_params()
            turns = self._replay(params)
        except (ValueError, RuntimeError, ImportError) as exc:
            self.message.value = f"<span style='color:#b00'>not applied: {_esc(str(exc))}</span>"
            return
        t1 = time.perf_counter()
        self.params, self.turns = params, turns
        self.end_scores = self._scores.get(params, [])
        for name in ENERGY_ONLY:  # the thresholds a model scorer ignores cannot be moved
            self.sliders[name].disabled = params.scorer != "energy"
        if "end_threshold" in self.sliders:  # read only by the end-of-turn model
            self.sliders["end_threshold"].disabled = params.end_model == "none"
        self._redraw()
        t2 = time.perf_counter()
        self.table.value = self.turn_table_html()
        self.last_update_ms = {"replay": (t1 - t0) * 1000, "draw": (t2 - t1) * 1000,
                               "total": (time.perf_counter() - t0) * 1000}
        self.message.value = f"<span style='color:#a60'>{_esc(note)}</span>" if note else ""
        ends = sum(1 for t in turns if t.end_reason == "silence")
        model = ""
        if self.end_scores:
            n_model = sum(1 for t in turns if t.end_reason == "end_model")
            model = f", {len(self.end_scores)} model scores ({n_model} ended a turn)"
        self.stats.value = (f"<b>{len(turns)}</b> turns ({ends} ended on silence{model}); replay "
                            f"{self.last_update_ms['replay']:.0f} ms, draw {self.last_update_ms['draw']:.0f} ms")

    def _replay(self, params: TurnParams) -> list[Turn]:
        hit = self._cache.get(params)
        if hit is None:
            if params.end_model != "none":
                from workbench.core.endturn import MemoEndModel
                from workbench.store.models import make_end_model

                if self._memo_model is None:
                    self._memo_model = MemoEndModel(make_end_model(params.end_model))
                decisions: list[Any] = []
                hit = detect_file(self.source.samples16k, RATE, params, end_model=self._memo_model,
                                  decisions=decisions)
                self._scores[params] = [(d.t, d.probability, d.reason == "complete") for d in decisions
                                        if d.kind == DecisionKind.END_SCORE]
            else:
                hit = detect_file(self.source.samples16k, RATE, params)
            self._cache[params] = hit
            while len(self._cache) > _CACHE_SIZE:
                old, _ = self._cache.popitem(last=False)
                self._scores.pop(old, None)
        else:
            self._cache.move_to_end(params)
        return hit

    def _redraw(self) -> None:
        """Blit: the static figure is drawn once; turn bars and thresholds are drawn on a copy of it."""
        self.plot.set_turns(self.turns, self.end_scores)
        self.plot.set_thresholds(self.params)
        dynamic = self.plot._turn_artists + self.plot._threshold_artists
        for a in dynamic:
            a.set_animated(True)
        scorer_kind = "energy" if self.params.scorer == "energy" else "model"
        if self._background is None or self._background_scorer != scorer_kind:
            self._canvas.draw()  # animated artists are left out of a full draw; the legend is in it
            self._background = self._canvas.copy_from_bbox(self.plot.fig.bbox)
            self._background_scorer = scorer_kind
        self._canvas.restore_region(self._background)
        for a in dynamic:
            self.plot.fig.draw_artist(a)
        self.image.value = _png(self._canvas)

    def turn_table_html(self) -> str:
        """The turns as a bordered, striped HTML table: turns numbered from 1, seconds to 2 places on the plot's
        clock, milliseconds whole.  Styles are inline (a widget's HTML gets no notebook stylesheet)."""
        if not self.turns:
            return "<i>no turns with these parameters</i>"
        off = self.offset_s
        cols = ("turn", "speech start (s)", "ActivityStart (s)", "speech end (s)", "ActivityEnd (s)", "length (s)",
                "end after speech (ms)", "ended by")
        cell = "border:1px solid #bbb;padding:2px 8px;"
        head = "".join(f"<th style='{cell}background:#eee;text-align:center'>{_esc(c)}</th>" for c in cols)
        rows = []
        for i, t in enumerate(self.turns, start=1):
            values = (str(i), f"{t.speech_start + off:.2f}", f"{t.activity_start + off:.2f}",
                      f"{t.speech_end + off:.2f}", f"{t.activity_end + off:.2f}",
                      f"{t.activity_end - t.activity_start:.2f}", f"{(t.activity_end - t.speech_end) * 1000:.0f}",
                      _esc(t.end_reason))
            shade = "background:#f6f6f6;" if i % 2 == 0 else ""
            rows.append("<tr>" + "".join(f"<td style='{cell}{shade}text-align:{'left' if j == 7 else 'right'}'>"
                                         f"{v}</td>" for j, v in enumerate(values)) + "</tr>")
        return (f"<table style='border-collapse:collapse;font-size:90%'><thead><tr>{head}</tr></thead>"
                f"<tbody>{''.join(rows)}</tbody></table>")

    def _on_save(self, _button: Any = None) -> None:
        try:
            self.save()
        except ValueError as exc:  # a button callback must not raise into the kernel
            self.message.value = f"<span style='color:#b00'>not saved: {_esc(str(exc))}</span>"

    def save(self, path: str | Path | None = None) -> Path:
        """Write the current parameters as JSON that ``store.paramfile.read_params`` (and ``--params``) reads."""
        p = Path(path or self.save_path.value)
        try:
            text = json.dumps(self.current_params().to_dict(), indent=2) + "\n"
            p.write_text(text)
        except OSError as exc:
            raise ValueError(f"{p}: cannot write parameters ({exc.strerror})") from None
        self.message.value = f"saved {_esc(str(p))}"
        return p


def _agg_canvas(fig: Any) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    return FigureCanvasAgg(fig)


def _png(canvas: Any) -> bytes:
    """PNG of the canvas buffer; fast compression, since it is redone on every change."""
    from PIL import Image

    w, h = canvas.get_width_height(physical=True)
    img = Image.frombuffer("RGBA", (w, h), bytes(canvas.buffer_rgba()), "raw", "RGBA", 0, 1)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _wav_bytes(x: np.ndarray, rate: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1, 1), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _esc(s: str) -> str:
    import html

    return html.escape(s)
