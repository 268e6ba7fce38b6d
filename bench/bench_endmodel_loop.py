"""Does the end-of-turn model stall the event loop?  10 mic pipelines on one loop, model inline vs on a thread.

Run:  nice -n 10 .venv/bin/python bench/bench_endmodel_loop.py [--write] [--n 10] [--seconds 40]

Each of N sessions is a ``MicPipeline`` (resample, detector with Smart Turn, send order) fed 20 ms
frames of 48 kHz audio at real-time pace by one asyncio task, with the loop ticking each pipeline
at its ``next_deadline()`` as the bridge's ingest does; the audio is the real-speech set's bundle
(``recordings/thinking.flac``, answers with thinking pauses, so the model scores often), each
session starting 0.7 s after the previous one.  No WebRTC, no SDK: this isolates what the model
adds (``bench_load.py`` measures the whole path).  Loop lag: a task sleeping 10 ms records how late
it wakes (p50/p99/max over the run).  Two runs: ``threaded_end_model=False`` (inference on the
loop) and ``True`` (``endturn.ThreadedEndModel``, what the bridge uses).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import pct, publish, section  # noqa: E402

from workbench.core.params import TurnParams  # noqa: E402
from workbench.core.pipeline import MicPipeline  # noqa: E402

TITLE = "End-of-turn model and the event loop"
AUDIO = Path(__file__).resolve().parents[1] / "recordings" / "thinking.flac"
FRAME = 960  # 20 ms at 48 kHz


async def one_session(pipe: MicPipeline, audio: np.ndarray, t0: float, start_s: float, scores: list[float]) -> None:
    loop = asyncio.get_running_loop()
    n = audio.shape[0] // FRAME
    await asyncio.sleep(start_s)
    begin = loop.time()
    for k in range(n):
        due = begin + (k + 1) * FRAME / 48_000
        while True:
            deadline = pipe.next_deadline()
            now = loop.time()
            wake = due if deadline is None else min(due, deadline + t0)
            if wake > now:
                await asyncio.sleep(wake - now)
            now = loop.time()
            if now >= due - 1e-4:
                break
            note(pipe.tick(now - t0), scores)
        note(pipe.frame(loop.time() - t0, k * FRAME / 48_000, audio[k * FRAME : (k + 1) * FRAME]), scores)


def note(outputs: list, scores: list) -> None:
    """Keep the model's scores and the end reasons (a score still running at the cap ends on max_silence)."""
    for o in outputs:
        kind = getattr(o, "kind", "")
        if kind == "end_score":
            scores.append(o.probability)
        elif kind == "vad" and o.decision == "speech_end":
            scores.append(o.reason)


async def lag_sampler(stop: asyncio.Event, lags: list[float], period_s: float = 0.01) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        t = loop.time()
        await asyncio.sleep(period_s)
        lags.append(max(0.0, (loop.time() - t - period_s) * 1000))


async def run_once(n: int, seconds: float, threaded: bool) -> dict[str, float]:
    x, rate = sf.read(AUDIO, dtype="float32")
    x = x[: int(seconds * rate)]
    audio = np.clip(np.round(soxr.resample(x, rate, 48_000) * 32767), -32768, 32767).astype(np.int16)
    params = TurnParams(silence_ms=300, end_model="smart-turn", max_silence_ms=2000)
    pipes = [MicPipeline(params, threaded_end_model=threaded) for _ in range(n)]
    from workbench.core.endturn import SmartTurn

    SmartTurn().probability(np.zeros(16000, np.float32))  # load and warm the session before the clock starts
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    lags: list[float] = []
    scores: list[float] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(lag_sampler(stop, lags))
    cpu0 = time.process_time()
    await asyncio.gather(*(one_session(p, audio, t0, 0.7 * i, scores) for i, p in enumerate(pipes)))
    cpu = time.process_time() - cpu0
    wall = loop.time() - t0
    stop.set()
    await sampler
    probs = [v for v in scores if isinstance(v, float)]
    reasons = [v for v in scores if isinstance(v, str)]
    return {"p50": pct(lags, 50), "p99": pct(lags, 99), "max": max(lags), "scores": len(probs),
            "by_model": reasons.count("end_model"), "by_cap": reasons.count("max_silence"),
            "cpu_pct": 100 * cpu / wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="update bench/BENCHMARKS.md")
    ap.add_argument("--n", type=int, default=10, help="sessions on the loop")
    ap.add_argument("--seconds", type=float, default=40.0, help="audio per session, s")
    args = ap.parse_args()
    rows = []
    for threaded in (False, True):
        r = asyncio.run(run_once(args.n, args.seconds, threaded))
        rows.append((threaded, r))
        print(threaded, r, file=sys.stderr, flush=True)
    lines = [f"{args.n} sessions on one asyncio loop, {args.seconds:g} s of `recordings/thinking.flac` each "
             "(staggered 0.7 s), energy + Smart Turn (silence 300 ms, wait ≤ 2000 ms); loop lag = lateness of a "
             "10 ms sleep. Target (issue 15): loop lag p99 < 20 ms at 10 sessions.", "",
             "| model runs | model scores | turns ended by the model / by the wait cap | loop lag p50 ms | p99 ms "
             "| max ms | process CPU % of a core | p99 target |",
             "|---|---|---|---|---|---|---|---|"]
    for threaded, r in rows:
        where = "on a worker thread (ThreadedEndModel, as the bridge)" if threaded else "inline on the loop"
        ok = "met" if r["p99"] < 20 else f"MISSED by {r['p99'] - 20:.0f} ms"
        lines.append(f"| {where} | {r['scores']} | {r['by_model']} / {r['by_cap']} | {r['p50']:.1f} | "
                     f"{r['p99']:.1f} | {r['max']:.0f} | "
                     f"{r['cpu_pct']:.0f} | {ok} |")
    publish(TITLE, section(TITLE, "\n".join(lines)), args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
