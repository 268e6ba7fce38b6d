"""Tuning panel and sweep benchmark.

Run:  .venv/bin/python bench/bench_panel.py [--write]

- Tuning panel: one slider change (offline replay + blitted redraw + turn table) on 5 minutes of
  audio (the bundled candidate track repeated), median and p95 over 20 changes; target median < 300 ms.
- Sweep: 100 parameter sets over 10 minutes of labelled audio on all cores (process start, audio
  load and evaluation included); target < 10 s on 2 cores.  For scale, the sweep's cost per set is
  estimated from one timed ``detect_file``.

``--write`` replaces the "## Tuning panel" and "## Sweep" sections of bench/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from workbench.analysis.replay import detect_file, to_mono_16k  # noqa: E402
from workbench.analysis.sweep import read_labels, sweep  # noqa: E402
from workbench.core.params import TurnParams  # noqa: E402
from workbench.ui.tuning import TuningPanel  # noqa: E402

CANDIDATE = REPO / "recordings" / "candidate.flac"


def tiled(seconds: float) -> tuple[np.ndarray, int, list[tuple[float, float]]]:
    """The candidate track repeated to ``seconds``, with its labels repeated alongside."""
    x, rate = sf.read(CANDIDATE, dtype="float32")
    labels = read_labels(CANDIDATE.with_name("candidate.labels.txt"))
    dur = x.size / rate
    reps = int(np.ceil(seconds / dur))
    y = np.tile(x, reps)[: int(seconds * rate)]
    spans = [(a + k * dur, b + k * dur) for k in range(reps) for a, b in labels if b + k * dur <= seconds]
    return y, rate, spans


def bench_panel(n_updates: int = 20) -> dict[str, float]:
    x, rate, _ = tiled(300.0)
    t0 = time.perf_counter()
    panel = TuningPanel((x, rate))
    build_s = time.perf_counter() - t0
    changes = [("silence_ms", v) for v in (300, 500, 900, 400, 700)] + [("start_db", v) for v in (-45, -35, -40)]
    changes += [("min_speech_ms", v) for v in (50, 150, 100)]
    times = []
    for i in range(n_updates):
        name, value = changes[i % len(changes)]
        if panel.sliders[name].value == value:
            value += panel.sliders[name].step
        t = time.perf_counter()
        panel.sliders[name].value = value
        times.append((time.perf_counter() - t) * 1000)
        assert panel.params.to_dict()[name] == value
    replay_ms = panel.last_update_ms["replay"]
    t = time.perf_counter()
    panel.scorer.value = "webrtcvad"
    webrtc_ms = (time.perf_counter() - t) * 1000
    return {"build_s": build_s, "median_ms": float(np.median(times)), "p95_ms": float(np.percentile(times, 95)),
            "max_ms": float(np.max(times)), "replay_ms": replay_ms, "webrtcvad_ms": webrtc_ms,
            "turns": len(panel.turns)}


def bench_sweep(jobs: int | None) -> dict[str, float]:
    x, rate, spans = tiled(600.0)
    grid = {"silence_ms": [200, 300, 400, 500, 600, 700, 800, 900, 1000, 1200],
            "start_db": [-50, -45, -40, -35, -30], "min_speech_ms": [50, 150]}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ten_minutes.flac"
        sf.write(path, x, rate)
        path.with_name("ten_minutes.labels.txt").write_text("".join(f"{a:.3f}\t{b:.3f}\tanswer\n" for a, b in spans))
        t = time.perf_counter()
        df = sweep(str(path), grid, jobs=jobs, progress=False)
        wall = time.perf_counter() - t
    x16 = to_mono_16k(x, rate)
    t = time.process_time()
    detect_file(x16, 16000, TurnParams())
    one = time.process_time() - t
    n_jobs = jobs or os.cpu_count() or 1
    return {"wall_s": wall, "sets": len(df), "jobs": n_jobs, "answers": len(spans),
            "detect_file_est_s": one * len(df) / n_jobs}


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}; os.cpu_count()={os.cpu_count()}; {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}; numpy {np.__version__}; matplotlib {matplotlib.__version__}")


def sections(panel: dict[str, float], sw: dict[str, float], sw1: dict[str, float]) -> dict[str, str]:
    head = (f"Machine: {machine()}  \nCommand: `.venv/bin/python bench/bench_panel.py --write`  \n"
            f"Date: {time.strftime('%Y-%m-%d')}\n")
    ok = "met" if panel["median_ms"] < 300 else "MISSED"
    p = (f"{head}\n5 minutes of audio (bundled candidate track repeated), energy scorer, 20 slider changes "
         f"(silence_ms, start_db, min_speech_ms); each change = offline replay + blitted redraw of the turn bars "
         f"and thresholds + turn table HTML + PNG encode.\n\n"
         "| measure | value |\n|---|---|\n"
         f"| update median | {panel['median_ms']:.0f} ms (target < 300 ms: {ok}) |\n"
         f"| update p95 | {panel['p95_ms']:.0f} ms |\n"
         f"| update max | {panel['max_ms']:.0f} ms |\n"
         f"| of which replay (detect_file: the one detector, whole buffer) | {panel['replay_ms']:.1f} ms |\n"
         f"| panel build (load, levels, first full draw) | {panel['build_s']:.2f} s |\n"
         f"| switch scorer to webrtcvad (full detect_file, not cached) | {panel['webrtcvad_ms']:.0f} ms |\n")
    ok = "met" if sw["wall_s"] < 10 else "MISSED"
    s = (f"{head}\n{sw['sets']} parameter sets (silence_ms × start_db × min_speech_ms) over 10 minutes of "
         f"labelled audio ({sw['answers']} answers; candidate track repeated), energy scorer; wall time including "
         f"process start, audio load and evaluation.\n\n"
         "| measure | value |\n|---|---|\n"
         f"| sweep, {sw['jobs']} processes | {sw['wall_s']:.2f} s (target < 10 s: {ok}) |\n"
         f"| sweep, 1 process | {sw1['wall_s']:.2f} s |\n"
         f"| same sweep through detect_file (estimate, {sw['jobs']} processes) | {sw['detect_file_est_s']:.1f} s |\n")
    return {"## Tuning panel": p, "## Sweep": s}


def write(parts: dict[str, str], path: Path) -> None:
    """Replace (or append) each ``## `` section, keeping every other section as it is."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    for title, body in parts.items():
        block = f"{title}\n\n{body}\n"
        pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
        text = pattern.sub(lambda _m, b=block: b, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="update bench/BENCHMARKS.md")
    args = ap.parse_args()
    panel = bench_panel()
    sw = bench_sweep(None)
    sw1 = bench_sweep(1)
    parts = sections(panel, sw, sw1)
    for title, body in parts.items():
        print(f"{title}\n\n{body}")
    if args.write:
        write(parts, HERE / "BENCHMARKS.md")
        print(f"updated {HERE / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
