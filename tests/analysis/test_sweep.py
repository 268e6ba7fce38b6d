"""Sweep: its replay is the live detector's decisions, the tidy table, grid parsing, Pareto/best, the CLI."""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from conftest import REPO, SPEECH  # noqa: E402

from workbench.analysis.replay import RATE, detect_file, detect_frames  # noqa: E402
from workbench.analysis.sweep import (  # noqa: E402
    METRICS,
    PARAM_NAMES,
    best,
    expand_grid,
    parse_grid,
    read_labels,
    register,
    summary,
    sweep,
    to_params,
    tradeoff_plot,
)
from workbench.core.params import TurnParams  # noqa: E402
from workbench.store.audiofile import load_mono  # noqa: E402
from workbench.store.paramfile import read_params  # noqa: E402

CANDIDATE = REPO / "recordings" / "candidate.flac"

EDGE_PARAMS = [
    TurnParams(),
    TurnParams(silence_ms=10, min_speech_ms=0),
    TurnParams(silence_ms=200, start_db=-35, stop_db=-35, min_speech_ms=30),
    TurnParams(silence_ms=700, max_turn_ms=500, min_speech_ms=100),
    TurnParams(silence_ms=333, start_db=-50, stop_db=-58, min_speech_ms=55, max_turn_ms=2500),
]


def _same(a, b) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x.end_reason != y.end_reason:
            return False
        if not np.allclose([x.speech_start, x.activity_start, x.activity_end, x.speech_end],
                           [y.speech_start, y.activity_start, y.activity_end, y.speech_end], atol=1e-9):
            return False
    return True


def _live(x: np.ndarray, p: TurnParams) -> list:
    """The live detector with a call per 20 ms frame and 10 ms ticks: what ``detect_file`` must reproduce."""
    n = 320
    frames = [((i + x[i : i + n].shape[0]) / RATE, i / RATE, x[i : i + n]) for i in range(0, x.shape[0], n)]
    return detect_frames(frames, p, tick_ms=10, end_t=x.shape[0] / RATE)


STATEFUL_PARAMS = [TurnParams(noise_margin_db=10), TurnParams(endpointing="dynamic", silence_ms=300),
                   TurnParams(scorer="webrtcvad", silence_ms=300)]


def test_file_replay_equals_the_live_detector_frame_by_frame_on_candidate_and_noise() -> None:
    rng = np.random.default_rng(7)
    noise = rng.standard_normal(16000 * 12).astype(np.float32)
    noise *= np.repeat(rng.uniform(0, 0.05, 120), 1600).astype(np.float32)
    for x in (load_mono(CANDIDATE, 16000), noise[:-77]):  # odd length: a partial last frame
        for p in EDGE_PARAMS + STATEFUL_PARAMS:
            assert _same(detect_file(x, 16000, p), _live(x, p)), p


@pytest.mark.skipif(not (SPEECH / "aepyx_8k.wav").exists(), reason="real speech not available")
def test_file_replay_equals_the_live_detector_on_real_speech() -> None:
    for name in ("aepyx_8k.wav", "silero_test_16k.wav"):
        x = load_mono(SPEECH / name, 16000)
        for p in EDGE_PARAMS[:3]:
            ref = _live(x, p)
            assert len(ref) >= 2
            assert _same(detect_file(x, 16000, p), ref), (name, p)


def test_sweep_rows_are_the_live_detectors_turns() -> None:
    x = load_mono(CANDIDATE, 16000)
    df = sweep((x, 16000), {"silence_ms": [200, 700], "scorer": ["energy", "webrtcvad"]}, jobs=1, progress=False)
    for row in df.itertuples():
        p = TurnParams(silence_ms=row.silence_ms, scorer=row.scorer)
        assert row.turns == len(_live(x, p)), p


def test_sweep_table_rows_and_splits_drop_as_silence_grows() -> None:
    df = sweep(str(CANDIDATE), {"silence_ms": [100, 300, 500, 700]}, jobs=1, progress=False)
    assert list(df.columns) == [*PARAM_NAMES, "policy", "source", *METRICS]
    assert len(df) == 4 and set(df["source"]) == {"candidate.flac"}
    assert list(df["silence_ms"]) == [100, 300, 500, 700]
    splits = df["split"].tolist()
    assert splits == sorted(splits, reverse=True) and splits[0] > 0 and splits[-1] == 0
    assert (df["found"] == 3).all() and (df["missed"] == 0).all()
    assert df["turns"].iloc[0] > df["turns"].iloc[-1] == 3


def test_sweep_parallel_equals_serial_and_many_sources(tmp_path: Path) -> None:
    import soundfile as sf

    x = load_mono(CANDIDATE, 16000)
    sf.write(tmp_path / "b.wav", x, 16000)
    (tmp_path / "b.labels.txt").write_text((REPO / "recordings" / "candidate.labels.txt").read_text())
    sources = [str(CANDIDATE), str(tmp_path / "b.wav"), (x, 16000)]
    grid = {"silence_ms": [300, 700], "start_db": [-45, -40]}
    one = sweep(sources, grid, labels=[None, None, None], jobs=1, progress=False)
    two = sweep(sources, grid, labels=[None, None, None], jobs=2, progress=False)
    assert len(one) == 2 * 2 * 3
    assert one.equals(two)
    unlabelled = one[one["source"] == "samples"]
    assert unlabelled["split"].isna().all() and (unlabelled["turns"] > 0).all()
    # stop_db follows start_db so -45 stays valid
    assert set(zip(one["start_db"], one["stop_db"], strict=True)) == {(-45.0, -50.0), (-40.0, -45.0)}


def test_sweep_other_scorer_goes_through_detector() -> None:
    df = sweep(str(CANDIDATE), {"scorer": ["webrtcvad"], "silence_ms": [700]}, jobs=1, progress=False)
    assert df["found"].iloc[0] == 3


def test_parse_grid_and_errors() -> None:
    assert parse_grid(["silence_ms=300,500", "start_db=-45:-35:5"]) == {
        "silence_ms": [300.0, 500.0], "start_db": [-45.0, -40.0, -35.0]}
    cases = [(["silence_ms"], "expected NAME="), (["nope=1"], "unknown parameter"),
             (["silence_ms=a,b"], "must be numbers"), (["silence_ms=1", "silence_ms=2"], "twice"),
             ([], "no --grid"), (["silence_ms=5:1:1"], "must be numbers")]
    for bad, msg in cases:
        with pytest.raises(ValueError, match=msg):
            parse_grid(bad)
    with pytest.raises(ValueError, match="grid combination stop_db=-30"):
        expand_grid({"stop_db": [-30]})


def test_read_labels(tmp_path: Path) -> None:
    assert read_labels(REPO / "recordings" / "candidate.labels.txt")[0] == (0.5, 5.497)
    (tmp_path / "bad.txt").write_text("1\tzero\tx\n")
    with pytest.raises(ValueError, match="line 1"):
        read_labels(tmp_path / "bad.txt")


def test_summary_best_and_tradeoff_plot() -> None:
    df = sweep(str(CANDIDATE), {"silence_ms": [100, 300, 500, 700, 1000]}, jobs=1, progress=False)
    s = summary(df)
    top = best(df)
    # No errors from 500 ms up; the shortest wait among those wins, and the wait includes the window.
    assert top["errors"] == 0 and top["silence_ms"] == 500.0
    assert top["end_wait_ms"] == pytest.approx(top["lateness_ms"] + 500)
    assert s["pareto"].any() and bool(s.loc[0, "pareto"])
    assert to_params(top).silence_ms == top["silence_ms"]
    fig = tradeoff_plot(df)
    ax = fig.axes[0]
    stars = [ln for ln in ax.get_lines() if ln.get_marker() == "*"]
    assert len(stars) == 1 and stars[0].get_xdata()[0] == top["errors"]
    assert stars[0].get_ydata()[0] == pytest.approx(top["end_wait_ms"])
    assert "the fewest turn errors, then the shortest end wait" in fig.get_supxlabel()
    assert all(float(t).is_integer() for t in ax.get_xticks())  # error counts: whole-number ticks


def test_tradeoff_plot_draws_every_set_and_says_how_a_tie_was_broken() -> None:
    """start_db -45/-40/-35 give one result: all three drawn side by side, the first in grid order starred."""
    from workbench.analysis.sweep import best_rule

    df = sweep(str(CANDIDATE), {"silence_ms": [300, 500], "start_db": [-45, -40, -35]}, jobs=1, progress=False)
    s = summary(df)
    fig = tradeoff_plot(df)
    ax = fig.axes[0]
    points = np.concatenate([c.get_offsets() for c in ax.collections if len(c.get_offsets())
                             and c.get_facecolors().size and c.get_facecolors()[0][3] > 0])
    assert len(points) == len(s) == 6 and len({tuple(p) for p in points.round(3)}) == 6
    tied = s[(s["errors"] == 0) & (s["silence_ms"] == 500)]
    assert len(tied) == 3 and tied["end_wait_ms"].round(1).nunique() == 1
    assert best(df)["start_db"] == -45  # the first in the grid
    assert best_rule(df).endswith("3 sets tie on both, the first in grid order is taken (start_db=-45, stop_db=-50)")
    front = [t.get_text() for t in ax.get_legend().get_texts() if t.get_text().startswith("Pareto front")]
    assert front and any(ln.get_drawstyle() == "steps-post" for ln in ax.get_lines())


def test_cli_sweep_writes_csv_plot_and_params(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ap = argparse.ArgumentParser(prog="workbench")
    register(ap.add_subparsers())
    args = ap.parse_args([
        "sweep", str(CANDIDATE), "--grid", "silence_ms=300,700", "--jobs", "1", "--no-progress",
        "-o", str(tmp_path / "r.csv"), "--plot", str(tmp_path / "r.png"), "--best-params", str(tmp_path / "best.json")])
    assert args.func(args) == 0
    assert "best: silence_ms=700" in capsys.readouterr().out
    assert (tmp_path / "r.png").stat().st_size > 1000
    assert len((tmp_path / "r.csv").read_text().splitlines()) == 3
    assert read_params(tmp_path / "best.json").silence_ms == 700
    bad = ap.parse_args(["sweep", str(CANDIDATE), "--grid", "silence=1"])
    with pytest.raises(ValueError, match="unknown parameter 'silence'"):
        bad.func(bad)


def test_labels_for_one_source_may_be_a_one_item_list_or_spans():
    from workbench.analysis.sweep import sweep as run_sweep

    src = str(REPO / "recordings" / "candidate.flac")
    aligned = run_sweep([src], {"silence_ms": [700]}, labels=[None], jobs=1, progress=False)
    spans = run_sweep([src], {"silence_ms": [700]}, labels=[(0.5, 5.5), (9.0, 14.7), (18.2, 24.2)], jobs=1,
                      progress=False)
    assert aligned["found"].iloc[0] == spans["found"].iloc[0] == 3


# --- eot-bench columns on the real-speech set with thinking pauses -------------------------------

THINKING = REPO / "recordings" / "thinking.flac"


def test_evaluate_eot_counts_cut_off_pauses_and_latency_exactly() -> None:
    from workbench.analysis.replay import Turn
    from workbench.analysis.sweep import evaluate_eot
    from workbench.store.speechset import Pause

    answers = [(1.0, 10.0), (14.0, 20.0)]
    pauses = [Pause(3.0, 5.0, "hesitation"), Pause(6.0, 7.0, "boundary"), Pause(16.0, 18.0, "hesitation")]
    turns = [Turn(1.0, 1.1, 3.7, "silence", 3.0),  # cuts the first hesitation off
             Turn(5.0, 5.1, 10.7, "silence", 10.0),  # true end + 700 ms
             Turn(14.0, 14.1, 20.3, "end_model", 20.0)]  # the model ended it 300 ms after the true end
    ev = evaluate_eot(turns, answers, pauses)
    assert (ev["pauses"], ev["cutoffs"], ev["cutoffs_hesitation"], ev["cutoffs_boundary"]) == (3, 1, 1, 0)
    assert ev["ends"] == 2 and ev["latency_ms"] == pytest.approx([700, 300])
    assert ev["cutoffs_other"] == 0 and ev["latency_median_ms"] == pytest.approx(500)


def test_sweep_reports_false_cutoffs_and_latency_with_the_window_included() -> None:
    from workbench.analysis.sweep import eot_summary

    df = sweep(str(THINKING), {"silence_ms": [300, 1000, 3000]}, jobs=1, progress=False)
    s = summary(df).set_index("silence_ms")
    assert list(s["pauses"]) == [12, 12, 12]
    # The bundle's pauses are 0.5-3 s: a 300 ms window cuts every one off, 3 s none.
    assert s.loc[300, "cutoffs"] == 12 and s.loc[3000, "cutoffs"] == 0
    lengths = [p.end - p.start for p in __import__("workbench.store.speechset", fromlist=["x"]).read_pauses(
        REPO / "recordings" / "thinking.pauses.txt")]
    assert s.loc[1000, "cutoffs"] == sum(1 for d in lengths if d > 1.0)
    # Latency is true end -> ActivityEnd: the window itself, give or take the faint tail the energy
    # threshold misses (labels end 35 dB below the peak, stop_db is -45 dBFS) and the 10 ms ticks.
    for w in (300, 1000, 3000):
        assert abs(s.loc[w, "latency_ms"] - w) < 60
    e = eot_summary(df).set_index("policy")
    assert e.loc["energy", "cutoff_at_300ms"] == e.loc["energy", "cutoff_at_500ms"] == 1.0  # only the 300 ms window
    assert e.loc["energy", "cutoff_at_1000ms"] == s.loc[1000, "false_cutoff_rate"]
    assert abs(e.loc["energy", "latency_at_5pct_ms"] - 3000) < 60
    # "best": the fewest cut-offs within the 1000 ms latency budget, not the 3 s window that cuts nobody off.
    assert best(df)["silence_ms"] == 1000


def test_sweep_worker_failure_is_one_line_naming_the_set(capsys, monkeypatch) -> None:
    from workbench.ui.cli import main

    monkeypatch.setenv("WORKBENCH_SILERO_ONNX", "/nonexistent/silero_vad.onnx")
    rc = main(["sweep", str(THINKING), "--grid", "scorer=energy,silero", "--no-progress", "--jobs", "2"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("workbench: error: sweep worker failed on scorer=silero: ")


def test_sweep_on_a_dask_cluster_of_worker_processes_equals_the_local_pool() -> None:
    distributed = pytest.importorskip("distributed")
    grid = {"silence_ms": [300, 1000, 2000], "scorer": ["energy", "webrtcvad"], "endpointing": ["fixed", "dynamic"]}
    local = sweep(str(THINKING), grid, jobs=1, progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        remote = sweep(str(THINKING), grid, progress=False, scheduler=c.scheduler_address)
    import pandas as pd

    pd.testing.assert_frame_equal(local, remote)
    assert remote["cutoffs"].notna().all() and len(remote) == 12


def test_sweep_with_a_wrong_scheduler_address_is_one_line(capsys, monkeypatch) -> None:
    pytest.importorskip("distributed")
    from workbench.analysis import distributed as wd
    from workbench.ui.cli import main

    monkeypatch.setattr(wd, "CONNECT_TIMEOUT_S", 1)
    rc = main(["sweep", str(THINKING), "--grid", "silence_ms=300", "--no-progress", "--scheduler", "tcp://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("workbench: error: cannot reach the dask scheduler at tcp://127.0.0.1:9")
    assert err.count("\n") == 1


def test_grid_takes_the_policy_names_as_text() -> None:
    g = parse_grid(["endpointing=fixed,dynamic", "end_model=none,smart-turn", "noise_margin_db=0,13"])
    assert g == {"endpointing": ["fixed", "dynamic"], "end_model": ["none", "smart-turn"], "noise_margin_db": [0, 13]}


def test_sweep_of_the_end_model_scores_each_silence_once_across_thresholds() -> None:
    from workbench.store.models import smart_turn_path

    if smart_turn_path() is None:
        pytest.skip("smart-turn-v3.2-cpu.onnx not installed")
    import soundfile as sf

    from workbench.analysis import sweep as sw
    from workbench.analysis.sweep import Source
    from workbench.store.speechset import read_pauses

    x, rate = sf.read(THINKING, dtype="float32")
    answers = read_labels(REPO / "recordings" / "thinking.labels.txt")[:1]
    pauses = [p for p in read_pauses(REPO / "recordings" / "thinking.pauses.txt") if p.end < answers[0][1]]
    src = Source("answer 1", x[: 17 * rate], answers, pauses)
    df = sweep([src], {"end_threshold": [0.5, 0.99], "silence_ms": [300]},
               base=TurnParams(end_model="smart-turn", max_silence_ms=3000), jobs=1, progress=False)
    s = summary(df).set_index("end_threshold")
    assert list(s["policy"]) == ["energy+smart-turn"] * 2 and list(s["pauses"]) == [3, 3]
    assert s.loc[0.99, "cutoffs"] <= s.loc[0.5, "cutoffs"]
    memo = sw._WORKER["caches"][("end_model", "smart-turn")]
    scorings = 0
    for thr in (0.5, 0.99):
        decisions: list = []
        detect_file(src.samples16k, 16000, TurnParams(end_model="smart-turn", max_silence_ms=3000, silence_ms=300,
                                                      end_threshold=thr), end_model=memo, decisions=decisions)
        scorings += sum(d.kind == "end_score" for d in decisions)
    assert memo.calls < scorings  # the silences both thresholds share were scored once
