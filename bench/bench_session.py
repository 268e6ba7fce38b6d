"""Per-session CPU of the live path, and end-of-turn latency with and without frames stopping in silence.

Run:  /tmp/venv/bin/python bench/bench_session.py [--write] [--sessions N]

Each session plays the bundled candidate track (3 labelled answers) through a loopback WebRTC link
into ``bridge.run_session``, against ``workbench emulator`` running in its own process (so this
process's CPU is the bridge's and the file player's, not the server's); ``--sessions`` with Opus
DTX (frames stop in silence) and as many without.

CPU: process CPU (``getrusage``) over the session's wall time, split by thread from
``/proc/self/task``: aiortc's ``audio-decoder`` thread (bridge side), the default executor's
threads, where aiortc's Opus encoder runs (sender side), and the event loop's thread.  The loop
thread runs both peers' RTP; its sender-side share is estimated by a baseline run of the loopback
link alone (player, encoder, RTP both ways, a consumer that only calls ``recv()``) and subtracted.

Latency: lateness = ActivityEnd on the wire (``send`` ``stage == "wire"``) − arrival of the last
speech frame before it (the track is digital silence between the labelled answers, so a speech
frame is one above -70 dBFS) − the silence window.
``--write`` replaces the "## Session CPU and end-of-turn latency" section.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import CANDIDATE, OUT, ExternalEmulator, pct, process_cpu, publish, section, thread_cpu  # noqa: E402

import workbench  # noqa: E402
from workbench import bridge, live  # noqa: E402
from workbench.audio import load_mono, to_int16  # noqa: E402
from workbench.ingest import ingest  # noqa: E402
from workbench.turns import TurnParams  # noqa: E402
from workbench.webrtc import FilePlayerTrack, loopback  # noqa: E402

TITLE = "Session CPU and end-of-turn latency"
CPU_TARGET_PCT = 3.0
LATE_TARGET_MS = 40.0
SPEECH_DB = -70.0


class ThreadCpu:
    """Samples per-thread CPU while a session runs (threads die with their peer connection)."""

    def __init__(self) -> None:
        self.last: dict[int, tuple[str, float]] = {}
        self.first = thread_cpu()
        self.names: dict[int | None, str] = {}  # Python thread names (the OS name is "python" for all)

    async def run(self) -> None:
        while True:
            self.last.update(thread_cpu())
            self.names.update({t.native_id: t.name for t in threading.enumerate()})
            await asyncio.sleep(0.25)

    def split(self) -> dict[str, float]:
        self.last.update(thread_cpu())
        names = {t.native_id: t.name for t in threading.enumerate()}
        names.update(self.names)
        out = {"loop": 0.0, "decoder": 0.0, "encoder": 0.0, "other": 0.0}
        for tid, (_, cpu) in self.last.items():
            cpu -= self.first.get(tid, ("", 0.0))[1]
            name = names.get(tid, "")
            key = ("loop" if tid == os.getpid() else "decoder" if name.endswith("-decoder")
                   else "encoder" if name.startswith("asyncio_") else "other")
            out[key] += cpu
        return out


async def measured(coro) -> tuple[object, float, float, dict[str, float]]:  # noqa: ANN001
    sampler = ThreadCpu()
    task = asyncio.create_task(sampler.run())
    cpu0, wall0 = process_cpu(), time.monotonic()
    try:
        result = await coro
    finally:
        task.cancel()
    return result, process_cpu() - cpu0, time.monotonic() - wall0, sampler.split()


async def baseline(audio: np.ndarray) -> tuple[float, dict[str, float]]:
    """CPU seconds per wall second of the loopback link alone: player, encoder, RTP, a bare consumer."""

    async def consume() -> None:
        link = await loopback(FilePlayerTrack(audio))
        t0 = time.monotonic()
        try:
            await ingest(link.remote_track, lambda: time.monotonic() - t0, lambda _frame: None)
        finally:
            await link.close()

    _, cpu, wall, split = await measured(consume())
    return cpu / wall, {k: v / wall for k, v in split.items()}


def lateness_ms(rec: workbench.Recording) -> list[float]:
    """Per ActivityEnd on the wire: its time − the last speech frame's arrival before it − the silence window.

    The candidate track is digital silence between answers, so a speech frame is one above
    ``SPEECH_DB``; frames are timed by arrival on the session clock (what the bridge can act on).
    """
    snd = rec.of_kind("send")
    ae = np.sort(snd[(snd["msg"] == "activity_end") & (snd["stage"] == "wire")]["t"].to_numpy())
    fr = rec.of_kind("frame")
    speech_t = np.sort(fr[fr["level_db"] > SPEECH_DB]["t"].to_numpy())
    silence_s = rec.meta["params"]["silence_ms"] / 1000
    out = []
    for t in ae:
        before = speech_t[speech_t < t]
        out.append(float((t - before[-1] - silence_s) * 1000) if before.size else float("nan"))
    return out


async def sessions(n: int, audio: np.ndarray, labels: list[tuple[float, float]]) -> dict[str, object]:
    """Run ``n`` sessions per DTX setting; CPU shares and lateness per turn (``labels`` counts the turns)."""
    res: dict[str, object] = {"cpu": [], "late": {True: [], False: []}, "turns": {True: [0, 0], False: [0, 0]}}
    shutil.rmtree(OUT / "session", ignore_errors=True)
    with ExternalEmulator() as emu:
        base_pct, base_split = await baseline(audio[: 10 * 48_000])
        res["baseline"] = (base_pct, base_split)
        for i in range(n):
            for dtx in (True, False):
                settings = live.LiveSettings(base_url=emu.base_url, ssl_context=emu.ssl_context())
                cfg = bridge.SessionConfig(params=TurnParams(), live=settings, dtx=dtx, name=f"bench-{i}-{dtx}")
                out = OUT / "session" / f"{'dtx' if dtx else 'nodtx'}-{i}"
                r, cpu, wall, split = await measured(bridge.run_session(audio, cfg, out))
                assert isinstance(r, bridge.SessionResult)
                if r.error:
                    raise RuntimeError(f"session {out} failed: {r.error}")
                res["cpu"].append((dtx, cpu / wall, {k: v / wall for k, v in split.items()}))  # type: ignore[union-attr]
                rec = workbench.load(out)
                late = lateness_ms(rec)
                res["late"][dtx] += late  # type: ignore[index]
                res["turns"][dtx][0] += sum(1 for x in late if x == x)  # type: ignore[index]
                res["turns"][dtx][1] += len(labels)  # type: ignore[index]
                print(f"session {out.name}: cpu {100 * cpu / wall:.1f}% late {np.round(late)}", file=sys.stderr)
    return res


def report(res: dict[str, object], n: int, params: TurnParams) -> str:
    base_pct, base = res["baseline"]  # type: ignore[misc]
    rows = []
    for dtx in (True, False):
        runs = [(c, s) for d, c, s in res["cpu"] if d == dtx]  # type: ignore[union-attr]
        total = float(np.mean([c for c, _ in runs]))
        split = {k: float(np.mean([s[k] for _, s in runs])) for k in runs[0][1]}
        sender = split["encoder"] + base["loop"]
        bridge_side = total - sender
        rows.append((dtx, total, split, sender, bridge_side))
    lines = [
        f"{n} sessions with DTX and {n} without, each the bundled candidate track (24.7 s, 3 answers) + 1.5 s "
        f"tail and the greeting, energy detector (silence {params.silence_ms} ms); emulator in its own process. "
        "CPU in % of one core over the session's wall time.",
        "",
        "| frames in silence | process total | event loop | Opus decoder thread | encoder threads | "
        "sender side (encoder + baseline loop) | bridge side (total − sender side) |",
        "|---|---|---|---|---|---|---|",
    ]
    for dtx, total, split, sender, bridge_side in rows:
        ok = "met" if bridge_side * 100 < CPU_TARGET_PCT else "MISSED"
        bridge_cell = (f"**{100 * bridge_side:.2f} %** (target < {CPU_TARGET_PCT:g} %: {ok})" if not dtx
                       else "– (the baseline sends every frame; see the row below)")
        lines.append(f"| {'stop (DTX)' if dtx else 'keep coming'} | {100 * total:.2f} % | {100 * split['loop']:.2f} % "
                     f"| {100 * split['decoder']:.2f} % | {100 * split['encoder']:.2f} % | {100 * sender:.2f} % | "
                     f"{bridge_cell} |")
    lines += [
        "",
        f"Baseline (loopback link alone, 10 s, no DTX): {100 * base_pct:.2f} % in all, of which event loop "
        f"{100 * base['loop']:.2f} %, decoder {100 * base['decoder']:.2f} %, encoder {100 * base['encoder']:.2f} %. "
        "The baseline loop share holds the receiving peer's RTP/SRTP work too, so the bridge side leaves out the "
        "WebRTC receive path (SRTP, jitter buffer; Opus decode is in the decoder column). Issue 7 counts WebRTC "
        "decode in the whole live path: measured that way (the bridge process of the Concurrent sessions section, "
        "which holds only receiving peers and bridges) a session costs ~6 % of one core at N = 10, ~10 % alone: "
        "that target is MISSED.",
        "",
        "End-of-turn lateness: ActivityEnd on the wire − arrival of the last speech frame before it − silence "
        "window (ms). With DTX the receiver's jitter buffer holds the last ~80 ms of each answer until the next "
        "burst (DESIGN.md §6), so the last frame that arrives before ActivityEnd is ~80 ms of media short of "
        "the true end; the bridge cannot act on frames it has not received.",
        "",
        "| frames in silence | turns | median | p95 | max | target p95 ≤ 40 ms |",
        "|---|---|---|---|---|---|",
    ]
    for dtx in (True, False):
        late = [x for x in res["late"][dtx] if x == x]  # type: ignore[index]
        found, total = res["turns"][dtx]  # type: ignore[index]
        p95 = pct(late, 95)
        target = ("met" if p95 <= LATE_TARGET_MS else "MISSED") if dtx else "(target is for DTX)"
        lines.append(f"| {'stop (DTX)' if dtx else 'keep coming'} | {found}/{total} | {pct(late, 50):.0f} | "
                     f"{p95:.0f} | {max(late, default=float('nan')):.0f} | {target} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="update bench/BENCHMARKS.md")
    ap.add_argument("--sessions", type=int, default=3, help="sessions per DTX setting")
    args = ap.parse_args()
    audio = to_int16(load_mono(CANDIDATE, 48_000))
    labels = [(float(a), float(b)) for a, b, *_ in
              (ln.split("\t") for ln in CANDIDATE.with_suffix(".labels.txt").read_text().splitlines() if ln.strip())]
    res = asyncio.run(sessions(args.sessions, audio, labels))
    text = section(TITLE, report(res, args.sessions, TurnParams()))
    publish(TITLE, text, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
