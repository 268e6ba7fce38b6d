"""Offline replay as a whole process: `workbench vad FILE --format json` on 10 and 60 minutes of 48 kHz FLAC.

Run:  .venv/bin/python bench/bench_offline.py [--write] [--rounds N] [--baseline TREE]

Times the whole command in a child process (Python start, imports, decode, resample, detection, JSON out): wall
clock, CPU (user + sys, from ``os.wait4``'s rusage) and peak resident memory.  Targets (issue 16): >= 500x real
time as a whole process on 10 minutes, and under 300 MiB resident for 60 minutes (memory flat in the audio's
length: the file is streamed).  The files are made here, in bench/out/, from the bundled candidate track repeated
(48 kHz mono PCM_16 FLAC, written block by block).  Rounds interleave the files (and, with ``--baseline TREE``,
the same command run from another checkout on 10 minutes), one run at a time.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import CANDIDATE, OUT, ROOT, arg_parser, publish, section  # noqa: E402

TITLE = "Offline replay, whole process"
MINUTES = (10, 60)
TARGET_X = 500
TARGET_MIB = 300


def long_file(minutes: int) -> Path:
    """The candidate track repeated to ``minutes`` as 48 kHz FLAC in bench/out/ (made once)."""
    path = OUT / f"offline_{minutes}min.flac"
    if path.exists() and abs(sf.info(path).duration - minutes * 60) < 0.5:
        return path
    OUT.mkdir(parents=True, exist_ok=True)
    x, rate = sf.read(CANDIDATE, dtype="int16")
    total = minutes * 60 * rate
    tmp = path.with_suffix(".tmp.flac")
    with sf.SoundFile(tmp, "w", rate, 1, subtype="PCM_16", format="FLAC") as f:
        done = 0
        while done < total:
            part = x[: total - done]
            f.write(part)
            done += part.shape[0]
    tmp.replace(path)
    return path


def commit(tree: Path) -> str:
    out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "?"


def run_once(path: Path, tree: Path) -> dict[str, float]:
    """One ``workbench vad`` process: wall s, CPU s, peak RSS MiB, and a hash of its output."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-m", "workbench", "vad", str(path), "--format", "json"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=OUT)
    out = proc.stdout.read() if proc.stdout else b""
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    if rc:
        raise SystemExit(f"{' '.join(cmd)} exited {rc}")
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "rss_mib": ru.ru_maxrss / 1024,
            "out": hash(out)}


def main() -> int:
    ap = arg_parser(__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", type=Path, help="another checkout to run the same command from (10 min only)")
    args = ap.parse_args()
    files = {m: long_file(m) for m in MINUTES}
    runs: dict[str, list[dict[str, float]]] = {}
    load_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    for _ in range(args.rounds):
        for m in MINUTES:
            runs.setdefault(f"{m}", []).append(run_once(files[m], ROOT))
            if args.baseline and m == 10:
                runs.setdefault("base10", []).append(run_once(files[m], args.baseline))
    load_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    if args.baseline:
        assert {r["out"] for r in runs["base10"]} == {r["out"] for r in runs["10"]}, "outputs differ from baseline"

    rows = []
    for key, rs in runs.items():
        minutes = 10 if key == "base10" else int(key)
        audio_s = minutes * 60
        wall = statistics.median(r["wall_s"] for r in rs)
        best_wall = min(r["wall_s"] for r in rs)
        cpu = statistics.median(r["cpu_s"] for r in rs)
        rss = max(r["rss_mib"] for r in rs)
        who = f"baseline {commit(args.baseline)}" if key == "base10" else f"this tree, {commit(ROOT)}"
        rows.append(f"| {minutes} min ({who}) | {wall:.2f} s ({audio_s / wall:.0f}x) | {best_wall:.2f} s "
                    f"({audio_s / best_wall:.0f}x) | {cpu:.2f} s ({audio_s / cpu:.0f}x) | {rss:.0f} MiB |")
    ten = runs["10"]
    x_wall = 600 / statistics.median(r["wall_s"] for r in ten)
    x_cpu = 600 / statistics.median(r["cpu_s"] for r in ten)
    rss60 = max(r["rss_mib"] for r in runs["60"])
    cpu10 = statistics.median(r["cpu_s"] for r in ten)
    per_min = (statistics.median(r["cpu_s"] for r in runs["60"]) - cpu10) / 50
    fixed = cpu10 - 10 * per_min
    body = (f"`workbench vad FILE --format json` as a child process ({args.rounds} interleaved rounds, one run at "
            f"a time), 48 kHz mono FLAC of the bundled candidate track repeated (bench/out/).  Wall and CPU "
            f"(user + sys of the process, all threads) are medians; memory is the peak resident set (max).\n\n"
            f"Load: before `{load_before}`; after `{load_after}`\n\n"
            "| audio | wall (x real time) | best wall | CPU (x real time) | peak RSS |\n|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n\n"
            f"Target >= {TARGET_X}x real time on 10 minutes as a whole process: "
            f"{'met' if x_wall >= TARGET_X else 'MISSED'} by median wall ({x_wall:.0f}x), "
            f"{'met' if x_cpu >= TARGET_X else 'missed'} by CPU time ({x_cpu:.0f}x: what the wall is on an idle "
            f"machine when the decode thread and the detector do not overlap).  Target < {TARGET_MIB} MiB for 60 "
            f"minutes: {'met' if rss60 < TARGET_MIB else 'MISSED'} ({rss60:.0f} MiB).  From the two lengths: "
            f"{fixed:.2f} s of CPU are fixed (Python start, imports) and each minute of audio costs {per_min:.3f} s "
            f"(decode, resample, detection: {60 / per_min:.0f}x real time).\n")
    publish(TITLE, section(TITLE, body), args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
