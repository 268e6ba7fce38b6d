"""Tuning panel without a browser: sliders drive the replay, thresholds stay ordered, save writes --params JSON."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402
from conftest import REPO  # noqa: E402

from workbench.analysis.replay import detect_file  # noqa: E402
from workbench.core.events import SessionMark  # noqa: E402
from workbench.core.params import TurnParams  # noqa: E402
from workbench.store.paramfile import read_params  # noqa: E402
from workbench.store.recording import Recorder, load  # noqa: E402
from workbench.ui.tuning import TuningPanel  # noqa: E402

CANDIDATE = REPO / "recordings" / "candidate.flac"


@pytest.fixture(scope="module")
def panel() -> TuningPanel:
    return TuningPanel(str(CANDIDATE))


def test_silence_slider_changes_turns_like_the_detector(panel: TuningPanel) -> None:
    panel.sliders["silence_ms"].value = 700
    assert len(panel.turns) == 3
    image = panel.image.value
    panel.sliders["silence_ms"].value = 300
    assert len(panel.turns) > 3  # pauses inside answers now end turns
    assert panel.params.silence_ms == 300
    x16, _ = sf.read(CANDIDATE, dtype="float32")
    from workbench.analysis.replay import to_mono_16k

    ref = detect_file(to_mono_16k(x16, 48000), 16000, TurnParams(silence_ms=300))
    assert [round(t.activity_end, 6) for t in panel.turns] == [round(t.activity_end, 6) for t in ref]
    assert panel.image.value[:4] == b"\x89PNG" and panel.image.value != image
    assert panel.table.value.count("<tr>") == len(panel.turns) + 1  # header row + one per turn
    assert panel.last_update_ms["total"] < 1000


def test_stop_threshold_never_exceeds_start(panel: TuningPanel) -> None:
    panel.sliders["start_db"].value = -40
    panel.sliders["stop_db"].value = -45
    panel.sliders["start_db"].value = -50  # below stop: stop follows
    assert panel.sliders["stop_db"].value == -50 and panel.params.stop_db == -50
    assert "stop_db" in panel.message.value
    panel.sliders["stop_db"].value = -30  # above start: held at start
    assert panel.sliders["stop_db"].value == -50
    assert panel.params.stop_db <= panel.params.start_db
    panel.sliders["start_db"].value = -40
    panel.sliders["stop_db"].value = -45


def test_scorer_dropdown_reruns_detector(panel: TuningPanel) -> None:
    panel.sliders["silence_ms"].value = 700
    panel.scorer.value = "webrtcvad"
    assert panel.params.scorer == "webrtcvad" and len(panel.turns) == 3
    panel.scorer.value = "energy"
    assert panel.params.scorer == "energy"


def test_save_button_writes_params_file(panel: TuningPanel, tmp_path: Path) -> None:
    panel.sliders["min_speech_ms"].value = 120
    panel.save_path.value = str(tmp_path / "p.json")
    panel.save_button.click()
    assert read_params(tmp_path / "p.json") == panel.params
    assert read_params(tmp_path / "p.json").min_speech_ms == 120
    panel.save_path.value = str(tmp_path / "missing" / "p.json")
    panel.save_button.click()  # never raises into the kernel
    assert "not saved" in panel.message.value


def test_recording_source_uses_session_clock(tmp_path: Path) -> None:
    x = np.zeros(48000 * 3, np.int16)
    x[48000 : 48000 + 24000] = (8000 * np.sin(np.arange(24000) * 0.05)).astype(np.int16)
    r = Recorder(tmp_path / "rec", {"params": TurnParams().to_dict()})
    r.emit(SessionMark(0.0, "start"))
    for i in range(0, x.size, 960):
        r.mic(2.0 + i / 48000, i, x[i : i + 960])
    r.close()
    p = TuningPanel(load(tmp_path / "rec"))
    assert p.offset_s == 2.0 and len(p.turns) == 1
    assert abs(p.turns[0].speech_start - 1.0) < 0.02
    assert ">3.00<" in p.table.value  # speech start shown on the session clock (2.0 + 1.0)
    assert p.plot.axes["wave"].get_xlim()[0] < 2.05


def test_samples_source_and_bad_values_do_not_crash() -> None:
    x = np.zeros(16000, np.float32)
    p = TuningPanel((x, 16000))
    assert p.turns == [] and "no turns" in p.table.value
    p.sliders["silence_ms"].value = 10  # clipped by the slider's own minimum, still valid
    assert p.params.silence_ms >= 10


@pytest.mark.skipif(__import__("workbench.store.models", fromlist=["x"]).smart_turn_path() is None,
                    reason="smart-turn-v3.2-cpu.onnx not installed")
def test_end_model_scores_show_and_its_threshold_slider_replays_without_rescoring(tmp_path: Path) -> None:
    x, rate = sf.read(REPO / "recordings" / "thinking.flac", dtype="float32")
    p = TuningPanel((x[: 16 * rate], rate), TurnParams(silence_ms=300, end_model="smart-turn", max_silence_ms=2500),
                    save_path=tmp_path / "p.json")
    assert p.end_scores and all(0 <= prob <= 1 for _, prob, _ in p.end_scores)
    assert all(t.end_reason in ("end_model", "max_silence", "end_of_audio") for t in p.turns)
    calls = p._memo_model.calls
    p.sliders["end_threshold"].value = 0.95
    assert p.params.end_threshold == 0.95
    assert not any(ended and prob < 0.95 for _, prob, ended in p.end_scores)
    assert p._memo_model.calls <= calls + 2  # the same silences, the same audio: scored once
    assert "model scores" in p.stats.value


def _legend_texts(panel: TuningPanel) -> list[str]:
    legend = panel.plot.axes["level"].get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend is not None else []


def test_panel_opens_on_the_parameters_it_was_given() -> None:
    given = TurnParams(silence_ms=700, start_db=-38, stop_db=-47, min_speech_ms=120, pre_roll_ms=250,
                       max_turn_ms=150_000)  # max_turn_ms beyond the slider's usual range: widened, not clipped
    p = TuningPanel(str(CANDIDATE), params=given)
    assert {k: s.value for k, s in p.sliders.items()} == {k: float(getattr(given, k)) for k in p.sliders}
    assert p.current_params() == given and p.params == given


def test_legend_and_sliders_follow_the_scorer(panel: TuningPanel) -> None:
    panel.scorer.value = "energy"
    assert {"start_db", "stop_db"} <= set(_legend_texts(panel))
    assert not panel.sliders["start_db"].disabled and not panel.sliders["stop_db"].disabled
    image = panel.image.value
    panel.scorer.value = "webrtcvad"
    assert not {"start_db", "stop_db"} & set(_legend_texts(panel))  # no threshold lines, none in the legend
    assert panel.sliders["start_db"].disabled and panel.sliders["stop_db"].disabled
    assert not panel.sliders["silence_ms"].disabled
    assert panel.image.value != image
    panel.scorer.value = "energy"
    assert {"start_db", "stop_db"} <= set(_legend_texts(panel)) and not panel.sliders["start_db"].disabled


def test_turn_table_is_styled_numbered_from_one_and_rounded(panel: TuningPanel) -> None:
    panel.sliders["silence_ms"].value = 700
    html = panel.table.value
    assert "border:1px solid" in html and "background:#f6f6f6" in html  # borders and striping
    import re

    cells = re.findall(r"<td[^>]*>([^<]*)</td>", html)
    assert cells[0::8] == [str(i) for i in range(1, len(panel.turns) + 1)]  # turns counted from 1
    ms = cells[6::8]
    assert ms and all(re.fullmatch(r"-?\d+", v) for v in ms)  # whole milliseconds, not "780.00"
    assert all(re.fullmatch(r"-?\d+\.\d\d", v) for v in cells[1::8])


def test_saved_message_clears_on_the_next_move(panel: TuningPanel, tmp_path: Path) -> None:
    panel.save(tmp_path / "p.json")
    assert panel.message.value.startswith("saved")
    panel.sliders["min_speech_ms"].value = panel.sliders["min_speech_ms"].value + 10
    assert panel.message.value == ""


def test_panel_shows_its_figure_where_widgets_do_not_render(panel: TuningPanel) -> None:
    """The live widget for JupyterLab; a PNG of the current figure for a rendered page (nbconvert, code hosts)."""
    import base64

    bundle = panel._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    png = base64.b64decode(bundle["image/png"])
    assert png == panel.image.value and png.startswith(b"\x89PNG")
    panel.sliders["silence_ms"].value = 300
    assert base64.b64decode(panel._repr_mimebundle_()["image/png"]) == panel.image.value != png
