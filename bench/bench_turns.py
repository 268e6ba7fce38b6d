"""Turn-detection benchmark: synthetic interviews (clean, white/pink noise at 30/15 dB SNR) and real speech.

Run:  .venv/bin/python bench/bench_turns.py [--write] [--interviews N]

Per parameter set and condition, one outcome per labelled answer (whole: one turn, covering only it; split:
several turns, none covering another answer; merged: into a turn that covers another answer too; missed),
false turns, ActivityEnd lateness (ms above the silence window, vs the synth's exact speech end), onset error
(ActivityStart − true start, over the answers not merged; |error| p95), and speed in seconds of audio per CPU
second on one core (time.process_time around the replay only).
``--write`` puts the tables in bench/BENCHMARKS.md under "## Turn detection".
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import publish, section  # noqa: E402
from synth import Interview, add_noise, interview  # noqa: E402

from workbench.analysis.replay import detect_file, evaluate  # noqa: E402
from workbench.core.params import TurnParams  # noqa: E402
from workbench.store.models import silero_model_path  # noqa: E402

TITLE = "Turn detection"
ENERGY_TARGET_X = 500
SPEECH = Path(__file__).resolve().parents[2] / "shared" / "speech"  # ../shared/speech beside the checkout
CONDITIONS: list[tuple[str, str | None, float | None]] = [
    ("clean", None, None),
    ("white 30 dB", "white", 30.0),
    ("pink 30 dB", "pink", 30.0),
    ("white 15 dB", "white", 15.0),
    ("pink 15 dB", "pink", 15.0),
]


def param_sets() -> list[tuple[str, TurnParams]]:
    sets = [
        ("energy (default)", TurnParams()),
        ("energy, silence 500", TurnParams(silence_ms=500)),
        ("energy + noise floor 13 dB", TurnParams(noise_margin_db=13)),
        ("webrtcvad mode 3", TurnParams(scorer="webrtcvad")),
    ]
    if silero_model_path() is not None:
        sets.append(("silero 0.5/0.35", TurnParams(scorer="silero")))
    return sets


def timed_detect(x: np.ndarray, rate: int, params: TurnParams) -> tuple[list, float]:
    t0 = time.process_time()
    turns = detect_file(x, rate, params)
    return turns, time.process_time() - t0


def fmt(v: float | None, nd: int = 0) -> str:
    return "–" if v is None else f"{v:.{nd}f}"


def run(n_interviews: int) -> str:
    clean = [interview(seed) for seed in range(n_interviews)]
    data: dict[str, list[Interview]] = {}
    for name, color, snr in CONDITIONS:
        noisy = [add_noise(iv, snr, color, seed=i) for i, iv in enumerate(clean)] if color else clean
        data[name] = noisy
    total_s = sum(iv.duration_s for iv in clean)
    n_answers = sum(len(iv.truth) for iv in clean)

    lines = [
        f"Synthetic interviews: {n_interviews} × espeak-ng voices, {n_answers} answers, "
        f"{total_s:.0f} s of audio per condition; pauses 200–400 ms inside answers, 1.5–3 s between; "
        "speech at −23 dBFS RMS.",
        "Lateness = ActivityEnd − true speech end − silence window (ms; 0 is ideal). "
        "Speed = seconds of audio per CPU second, one core.",
        "One outcome per answer, adding up to the answers: *whole* = one turn covers it and nothing else; *split* = "
        "several turns cover it, none of them another answer; *merged* = a turn that covers it also covers another "
        "answer (not found: the bridge sent one ActivityEnd for several answers); *missed* = no turn. *False* = "
        "turns covering no answer. Onset = ActivityStart − true speech start (ms), over the answers not merged "
        "(a merged answer's ActivityStart is an earlier answer's); its |p95| is the absolute error.",
        "",
        "| params | condition | whole | split | merged | missed | false | late med | late p95 | onset med "
        "| onset \\|p95\\| | speed ×RT |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    energy_speeds: list[float] = []  # the figure: energy turn detection offline, >= 500x real time
    floor_speeds: list[float] = []  # with the adaptive noise floor (a Python loop per 10 ms window): reported apart
    for pname, params in param_sets():
        for cname, _, _ in CONDITIONS:
            agg = {"whole": 0, "split_only": 0, "merged_answers": 0, "missed": 0, "false_turns": 0}
            late: list[float] = []
            onset: list[float] = []
            cpu = 0.0
            for iv in data[cname]:
                turns, dt = timed_detect(iv.audio, 16000, params)
                cpu += dt
                r = evaluate(turns, iv.truth, params.silence_ms)
                for k in agg:
                    agg[k] += r[k]
                late += r["lateness_ms"]
                onset += r["onset_unmerged_ms"]
            if params.scorer == "energy" and params.noise_margin_db == 0:
                energy_speeds.append(total_s / max(cpu, 1e-9))
            elif params.scorer == "energy":
                floor_speeds.append(total_s / max(cpu, 1e-9))
            lat = np.asarray(late)
            late_med = float(np.median(lat)) if lat.size else None
            late_p95 = float(np.percentile(lat, 95)) if lat.size else None
            lines.append(
                f"| {pname} | {cname} | {agg['whole']}/{n_answers} | {agg['split_only']} | "
                f"{agg['merged_answers']} | {agg['missed']} | {agg['false_turns']} | {fmt(late_med)} | "
                f"{fmt(late_p95)} | {fmt(float(np.median(onset)) if onset else None)} | "
                f"{fmt(float(np.percentile(np.abs(onset), 95)) if onset else None)} | "
                f"{total_s / max(cpu, 1e-9):.0f} |"
            )
            print(lines[-1], file=sys.stderr, flush=True)

    slowest = min(energy_speeds)
    lines += ["", f"Energy scorer, slowest condition: {slowest:,.0f}× real time (target ≥ {ENERGY_TARGET_X}×: "
              f"{'met' if slowest >= ENERGY_TARGET_X else 'MISSED'}); with the adaptive noise floor "
              f"{min(floor_speeds):,.0f}× (no target)."]

    lines += ["", *real_speech_in_noise()]

    files = sorted(SPEECH.glob("*.wav")) if SPEECH.is_dir() else []
    if files:
        lines += ["", "Real speech (no labels): turns found and speed.", "",
                  "| params | file | duration s | turns | ended on silence | speed ×RT |",
                  "|---|---|---|---|---|---|"]
        for pname, params in param_sets():
            for f in files:
                x, rate = sf.read(f, dtype="float32")
                turns, dt = timed_detect(x, rate, params)
                dur = x.shape[0] / rate
                n_sil = sum(t.end_reason == "silence" for t in turns)
                speed = dur / max(dt, 1e-9)
                lines.append(f"| {pname} | {f.name} | {dur:.0f} | {len(turns)} | {n_sil} | {speed:.0f} |")
    return "\n".join(lines)


def real_speech_in_noise() -> list[str]:
    """The bundled real-speech answers (``recordings/thinking.flac``) in pink noise: turn errors per SNR.

    Silence window 1500 ms: pauses longer than that split an answer whatever the scorer (the clean rows show how
    many); answers are 3.5 s apart, so a merge or a missed end is background noise holding the turn open.
    """
    from workbench.analysis.sweep import read_labels
    from workbench.store import speechset

    rec = Path(__file__).resolve().parents[1] / "recordings"
    x, _ = sf.read(rec / "thinking.flac", dtype="float32")
    answers = read_labels(rec / "thinking.labels.txt")
    lines = ["Real speech (`recordings/thinking.flac`: 4 answers of LibriVox / Asterisk human speech with "
             "0.5–3 s thinking pauses) in seeded pink noise; SNR against the active speech level; silence "
             "window 1500 ms (pauses longer than that split an answer whatever the scorer: see the clean rows; "
             "answers are 3.5 s apart, so a merge is noise holding a turn open).", "",
             "| params | SNR | found | split | merged | missed | false | late med |",
             "|---|---|---|---|---|---|---|---|"]
    for pname, params in param_sets():
        params = TurnParams.from_dict({**params.to_dict(), "silence_ms": 1500})
        for snr in speechset.SNRS_DB:
            y = x if snr is None else speechset.with_noise(x, answers, snr, seed=1)
            r = evaluate(detect_file(y, 16000, params), answers, params.silence_ms)
            lines.append(f"| {pname} | {'clean' if snr is None else f'{snr:g} dB'} | {r['found']}/4 | {r['split']} | "
                         f"{r['merged']} | {r['missed']} | {r['false_turns']} | {fmt(r['lateness_median_ms'])} |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="update bench/BENCHMARKS.md")
    ap.add_argument("--interviews", type=int, default=4, help="synthetic interviews to run (5 answers each)")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # speed is quoted for one core
    publish(TITLE, section(TITLE, run(args.interviews)), args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
