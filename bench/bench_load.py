"""Load benchmark: one process bridges N concurrent sessions into one embedded emulator.

Run:  /tmp/venv/bin/python bench/bench_load.py [--write] [--n 1,5,10,20] [--profile N]

Each session plays 13.5 s of the candidate track (two answers, frames never stop: no DTX) through
its own loopback WebRTC link into ``bridge.run_session``; all N run at once under ``asyncio.gather``
in this process, with the Live API emulator (TLS websocket server) on the same event loop, and
record into ``bench/out/load/N/<i>/``.  Per N: event-loop lag p50/p99/max pooled over every
session's ``loop_lag`` events (sampled every 100 ms), process CPU in % of one core over the wall
time, RSS growth per session (peak), frames lost (player frames − ``frame`` events), and turns
that missed their ActivityEnd or their answer (turn table).  ``--profile N`` runs that N under
cProfile and prints the top functions (``bench/out/load/N.prof``).
``--write`` replaces the "## Concurrent sessions" section of bench/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import CANDIDATE, OUT, pct, process_cpu, rss_mb, section, write_section  # noqa: E402

import workbench  # noqa: E402
from workbench import bridge, live  # noqa: E402
from workbench.analysis import turn_table  # noqa: E402
from workbench.audio import load_mono, to_int16  # noqa: E402
from workbench.emulator import Emulator, EmulatorConfig  # noqa: E402
from workbench.turns import TurnParams  # noqa: E402
from workbench.webrtc import FRAME_S  # noqa: E402

TITLE = "Concurrent sessions"
LAG_TARGET_MS = 20.0
TAIL_S = 1.5
TURNS = 2


def short_audio() -> np.ndarray:
    """Answer 1 and answer 2 of the candidate track with the pause between them cut to 2 s (13.5 s)."""
    x = to_int16(load_mono(CANDIDATE, 48_000))
    return np.concatenate([x[: 7 * 48_000], x[int(8.7 * 48_000):int(15.2 * 48_000)]])


async def run_n(n: int, audio: np.ndarray) -> dict[str, float]:
    out = OUT / "load" / str(n)
    shutil.rmtree(out, ignore_errors=True)
    rss0 = rss_mb()
    peak = [rss0]

    async def watch_rss() -> None:
        while True:
            peak[0] = max(peak[0], rss_mb())
            await asyncio.sleep(0.5)

    async with Emulator(EmulatorConfig()) as emu:
        def cfg(i: int) -> bridge.SessionConfig:
            settings = live.LiveSettings(base_url=emu.base_url, ssl_context=emu.client_ssl_context())
            return bridge.SessionConfig(params=TurnParams(), live=settings, dtx=False, tail_s=TAIL_S,
                                        name=f"load-{n}-{i}")

        watcher = asyncio.create_task(watch_rss())
        cpu0, wall0 = process_cpu(), time.monotonic()
        results = await asyncio.gather(*(bridge.run_session(audio, cfg(i), out / str(i)) for i in range(n)))
        cpu, wall = process_cpu() - cpu0, time.monotonic() - wall0
        watcher.cancel()
    lags: list[float] = []
    lost = missed_end = unanswered = errors = 0
    expected_frames = int(round(audio.size / 48_000 / FRAME_S + TAIL_S / FRAME_S))
    for r in results:
        errors += r.error is not None
        rec = workbench.load(r.path)
        lags += rec.of_kind("loop_lag")["lag_ms"].tolist()
        lost += max(0, expected_frames - len(rec.of_kind("frame")))
        tt = turn_table(rec)
        missed_end += max(0, TURNS - int(tt["activity_end"].notna().sum()))
        unanswered += int((~tt["answered"]).sum()) + max(0, TURNS - len(tt))
    return {"n": n, "lag_p50": pct(lags, 50), "lag_p99": pct(lags, 99), "lag_max": max(lags, default=float("nan")),
            "cpu_pct": 100 * cpu / wall, "wall_s": wall, "rss_per_session_mb": (peak[0] - rss0) / n,
            "frames_lost": lost, "frames_expected": expected_frames * n, "missed_end": missed_end,
            "unanswered": unanswered, "errors": errors}


def report(rows: list[dict[str, float]], audio_s: float) -> str:
    lines = [
        f"N sessions at once in one process (one event loop, the emulator on it too), each {audio_s:.1f} s of the "
        f"candidate track (2 answers) + {TAIL_S:g} s tail, no DTX, energy detector, recording everything. "
        "Loop lag pooled over every session's 100 ms samples. CPU in % of one core (2 cores here).",
        "",
        "| N | loop lag p50 | loop lag p99 | loop lag max | process CPU | RSS per session | frames lost | "
        "turns without ActivityEnd | turns unanswered | session errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mark = ""
        if r["n"] == 10:
            mark = f" (target < {LAG_TARGET_MS:g} ms: {'met' if r['lag_p99'] < LAG_TARGET_MS else 'MISSED'})"
        lines.append(
            f"| {r['n']} | {r['lag_p50']:.1f} ms | {r['lag_p99']:.1f} ms{mark} | {r['lag_max']:.0f} ms | "
            f"{r['cpu_pct']:.0f} % | {r['rss_per_session_mb']:.1f} MB | {r['frames_lost']}/{r['frames_expected']} | "
            f"{r['missed_end']}/{TURNS * r['n']} | {r['unanswered']}/{TURNS * r['n']} | {r['errors']} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="update bench/BENCHMARKS.md")
    ap.add_argument("--n", default="1,5,10,20", help="session counts, comma-separated")
    ap.add_argument("--profile", type=int, help="run this N under cProfile and print the top functions")
    args = ap.parse_args()
    audio = short_audio()
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        row = asyncio.run(run_n(args.profile, audio))
        prof.disable()
        prof.dump_stats(OUT / "load" / f"{args.profile}.prof")
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(30)
        print(s.getvalue())
        print(report([row], audio.size / 48_000))
        return 0
    rows = []
    for n in (int(x) for x in args.n.split(",")):
        rows.append(asyncio.run(run_n(n, audio)))
        print(rows[-1], file=sys.stderr)
    text = section(TITLE, report(rows, audio.size / 48_000))
    print(text)
    if args.write:
        print(f"wrote {write_section(TITLE, text)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
