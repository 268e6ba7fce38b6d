"""Cost of ``workbench.io.tap``: the same user bridge, untapped and tapped, side by side in one run.

Run:  .venv/bin/python bench/bench_tap.py [--write] [--n 5] [--rounds 8] [--seconds 20]   (~17 min)
(``bench/run_all.py`` runs it with the other bench_*.py scripts.)

The bridge is the user's code, written correctly (one persistent receive loop, one task sending in
order): a paced microphone track hands 20 ms frames of 48 kHz packed-stereo s16 (what aiortc's
decoder gives a bridge) from the bundled candidate track; the bridge averages the channels,
resamples to 16 kHz with a soxr stream, gates speech on energy (ActivityStart / ActivityEnd) and
sends 100 ms audio chunks with ``send_realtime_input``.  The tapped variant differs only by the
tap's lines: ``Tap``, ``rec.client``, ``rec.session``, ``rec.track`` and ``rec.vad`` for each gate
decision, recording into ``bench/out/tap/``; two more tap the session only and the track only
(the client is the tap's in both), which split the cost between the message path and the frame path.

Side by side: in each round every variant runs in turn, each alone in a process of its own
(``--n`` sessions on a fresh uvloop), against one ``workbench emulator`` in another process
(``benchlib.ExternalEmulator``); the order is reversed every other round, so a drift of the machine
over a round falls on both sides.  Not all at once: on two cores, four processes whose sessions'
20 ms ticks are aligned wake together and wait for each other, so each one's loop lag measured its
neighbours (the earlier runs of this section did that: p99 up to 90 ms, untapped too), and their
cache contention inflated the CPU of whichever did more per tick.  Per variant and round: the
process's CPU time over the window in which all its sessions stream (last mic start to first mic
end), in % of one core per session; and event-loop lag, sampled every 100 ms by the bench itself
in the same window (p50 / p99 / max).  The figure is the tapped − untapped difference per session,
round by round (median over the rounds): the host's load moves the absolute figures by tens of
per cent from one minute to the next, the difference of one round much less.  Even so one round's
difference spreads over ±0.3 % of a core on this VM: the defaults (8 rounds of 20 s) are what it
takes for the median to settle (4–6 rounds of 10 s gave +0.29 and +0.61 for the same code).

After the rounds, with ``--account`` (the default): one tapped run alone, with each of the tap's
entry points timed in thread CPU time, so the figure splits into what costs what (the frame
path and its raw mic audio, the loop-lag timer, sends and their raw audio, receives and theirs,
the wire tap's events); and the frame path measured alone (``frame_costs``).
``--write`` replaces the "## Recording a user's bridge (workbench.tap)" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import CANDIDATE, OUT, CpuTrace, ExternalEmulator, pct, publish, section  # noqa: E402

from workbench import tap  # noqa: E402
from workbench.core.pcm import to_int16  # noqa: E402
from workbench.io import eventloop  # noqa: E402
from workbench.store.audiofile import load_mono  # noqa: E402
from workbench.store.recording import Recorder  # noqa: E402

TITLE = "Recording a user's bridge (workbench.tap)"
TARGET_PCT = 0.5  # % of one core per session, on top of the user's bridge (issue 14)
MODEL = "gemini-2.5-flash-native-audio-preview-12-2025"
FRAME = 960
GATE_DB = -40.0
HANG_FRAMES = 35  # 700 ms below the gate ends a turn
CHUNK = 1600  # 100 ms at 16 kHz per send
LAG_PERIOD_S = 0.1


class PacedTrack:
    """Frames due every 20 ms from the first ``recv()``: a microphone as a bridge receives it."""

    def __init__(self, audio: np.ndarray) -> None:
        stereo = np.repeat(audio[: audio.size // FRAME * FRAME], 2).reshape(-1, 2 * FRAME)
        self.frames = []
        for i, row in enumerate(stereo):
            f = av.AudioFrame.from_ndarray(row.reshape(1, -1), format="s16", layout="stereo")
            f.sample_rate, f.pts, f.time_base = 48_000, i * FRAME, fractions.Fraction(1, 48_000)
            self.frames.append(f)
        self.i = 0
        self.t0: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.i >= len(self.frames):
            raise EOFError
        if self.t0 is None:
            self.t0 = time.monotonic()
        wait = self.t0 + self.i * FRAME / 48_000 - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        self.i += 1
        return self.frames[self.i - 1]


def _level_db(x: np.ndarray) -> float:
    ms = float(np.dot(x.astype(np.float32), x.astype(np.float32))) / max(1, x.size) / 32768**2
    return 10 * np.log10(ms) if ms > 0 else -120.0


# What each variant taps: the untapped bridge, the whole tap, and the two halves of its cost.
VARIANTS = {"untapped": (), "tapped": ("session", "track"), "tapped, session only": ("session",),
            "tapped, track only": ("track",)}


async def user_bridge(audio: np.ndarray, emu: ExternalEmulator, out: Path | None, spans: list[tuple[float, float]],
                      parts: tuple[str, ...] = ("session", "track"), arrivals: list[float] | None = None) -> None:
    """One session of the user's bridge; tapped into ``out`` when given (``parts``: which of session, track;
    the client is always the tap's then)."""
    from google import genai
    from google.genai import types

    rec = tap.Tap(out, name=out.name) if out is not None else None
    opts = types.HttpOptions(base_url=emu.base_url, async_client_args={"ssl": emu.ssl_context()})
    client = rec.client(api_key="bench", http_options=opts) if rec else genai.Client(api_key="bench",
                                                                                     http_options=opts)
    config = types.LiveConnectConfig(
        response_modalities=["AUDIO"], realtime_input_config=types.RealtimeInputConfig(
            automatic_activity_detection=types.AutomaticActivityDetection(disabled=True)))
    try:
        async with client.aio.live.connect(model=MODEL, config=config) as session:
            if rec is not None and "session" in parts:
                session = rec.session(session)
            track: Any = PacedTrack(audio)
            if rec is not None and "track" in parts:
                track = rec.track(track)

            async def receive() -> None:
                while True:
                    async for _msg in session.receive():
                        pass

            reader = asyncio.create_task(receive())
            resampler = soxr.ResampleStream(48_000, 16_000, 1, dtype="int16")
            pending: list[np.ndarray] = []
            in_turn, quiet = False, 0
            t_start = time.monotonic()
            while True:
                try:
                    frame = await track.recv()
                except EOFError:
                    break
                if arrivals is not None:
                    arrivals.append(time.monotonic())
                x = np.frombuffer(frame.planes[0], np.int16, count=2 * frame.samples)
                pcm = resampler.resample_chunk(((x[0::2].astype(np.int32) + x[1::2]) >> 1).astype(np.int16))
                loud = _level_db(pcm) >= GATE_DB
                if not in_turn and loud:
                    in_turn, quiet = True, 0
                    await session.send_realtime_input(activity_start=types.ActivityStart())
                    if rec is not None:
                        rec.vad("speech_start", reason="gate")
                if not in_turn:
                    continue
                pending.append(pcm)
                quiet = 0 if loud else quiet + 1
                if sum(p.size for p in pending) >= CHUNK or quiet >= HANG_FRAMES:
                    data = np.concatenate(pending).astype("<i2").tobytes()
                    pending = []
                    await session.send_realtime_input(audio=types.Blob(data=data, mime_type="audio/pcm;rate=16000"))
                if quiet >= HANG_FRAMES:
                    in_turn = False
                    await session.send_realtime_input(activity_end=types.ActivityEnd())
                    if rec is not None:
                        rec.vad("speech_end", reason="gate")
            spans.append((t_start, time.monotonic()))
            reader.cancel()
            with __import__("contextlib").suppress(BaseException):
                await reader
    finally:
        if rec is not None:
            rec.close()


async def run_variant(n: int, audio: np.ndarray, emu: ExternalEmulator, out: Path | None,
                      parts: tuple[str, ...] = ("session", "track")) -> dict[str, float]:
    trace = CpuTrace()
    tracer = asyncio.create_task(trace.run())
    loop = asyncio.get_running_loop()
    lags: list[tuple[float, float]] = []

    async def sample_lag() -> None:
        while True:
            due = loop.time() + LAG_PERIOD_S
            await asyncio.sleep(LAG_PERIOD_S)
            lags.append((time.monotonic(), (loop.time() - due) * 1000.0))

    lagger = asyncio.create_task(sample_lag())
    spans: list[tuple[float, float]] = []
    arrivals: list[float] = []
    await asyncio.gather(*(user_bridge(audio, emu, None if out is None else out / str(i), spans, parts, arrivals)
                           for i in range(n)))
    tracer.cancel()
    lagger.cancel()
    got = trace.all_streaming([a for a, _ in spans], [b for _, b in spans])
    lo, hi = max(a for a, _ in spans), min(b for _, b in spans)
    inside = [s for s in trace.samples if lo <= s[0] <= hi]
    # per second of audio the sessions got, not per second of wall time: a starved process (the machine shared)
    # falls behind its microphones and would look cheaper per wall second
    audio_s = sum(inside[0][0] <= t <= inside[-1][0] for t in arrivals) * FRAME / 48_000 if len(inside) > 1 else 0
    got["per_session_pct"] = 100 * (inside[-1][1] - inside[0][1]) / audio_s if audio_s else float("nan")
    got["realtime"] = audio_s / (n * got["stream_window_s"]) if audio_s else float("nan")
    window = [v for t, v in lags if lo <= t <= hi]
    return {**got, "lag_p50": pct(window, 50), "lag_p99": pct(window, 99), "lag_max": max(window, default=np.nan)}


class EmulatorAt:
    """The emulator a worker is pointed at (``ExternalEmulator`` runs in the parent)."""

    def __init__(self, base_url: str, cert: str) -> None:
        self.base_url, self.cert = base_url, cert

    def ssl_context(self):  # noqa: ANN201
        from workbench.emulator.certs import client_context

        return client_context(Path(self.cert))


# The tap's entry points, timed by ``--account``: label -> its (owner, method)s.  Each call is timed in thread CPU
# time, without the time of the timed calls it makes (those count under their own label): the notes on the user's
# path, then what the 100 ms tick does with them.
ENTRY_POINTS = {
    "notes: each frame (recv)": [(tap.Tap, "_frame")],
    "notes: each send and message received": [(tap.Tap, "_note_send"), (tap.Tap, "_sent_done"),
                                              (tap.Tap, "_received")],
    "notes: other events (wire tap, vad)": [(tap.Tap, "emit")],
    "tick: frames (batches, frame rows, raw mic audio)": [(tap.Tap, "_take_frames")],
    "tick: sends (app events, raw sent audio)": [(tap.Tap, "_record_sends")],
    "tick: messages (app events, raw model audio)": [(tap.Tap, "_record_messages")],
    "tick: events written (one write a tap)": [(Recorder, "emit_items")],
    "tick: the rest (timer, loop lag)": [(tap._Ticker, "_fire")],
}


def account() -> dict[str, list[float]]:
    """Wrap ``ENTRY_POINTS`` so that each adds its own time; returns label -> [calls, thread CPU s (its own, not its
    timed callees'), longest call's thread CPU s and wall s (both with its callees; a wall time well past its CPU
    time: the thread was preempted or blocked)]."""
    import functools

    acc: dict[str, list[float]] = {label: [0, 0.0, 0.0, 0.0] for label in ENTRY_POINTS}
    children: list[float] = []  # per timed call in progress: the thread CPU time of its timed callees
    for label, methods in ENTRY_POINTS.items():
        for owner, name in methods:
            inner = getattr(owner, name)

            def wrapper(*a: Any, _f: Any = inner, _label: str = label, **k: Any) -> Any:
                children.append(0.0)
                t0, w0 = time.thread_time(), time.perf_counter()
                try:
                    return _f(*a, **k)
                finally:
                    cpu, wall = time.thread_time() - t0, time.perf_counter() - w0
                    own = cpu - children.pop()
                    if children:
                        children[-1] += cpu
                    e = acc[_label]
                    e[0] += 1
                    e[1] += own
                    e[2] = max(e[2], cpu)
                    e[3] = max(e[3], wall)

            setattr(owner, name, functools.wraps(inner)(wrapper))
    return acc


def worker(args: argparse.Namespace) -> int:
    """One variant in this process: wait for ``--start-at``, run, print the result as one JSON line."""
    import json

    audio = to_int16(load_mono(CANDIDATE, 48_000))[: int(args.seconds * 48_000)]
    parts = VARIANTS[args.worker]
    acc = account() if args.account_run else None
    emu = EmulatorAt(args.base_url, args.cert)
    time.sleep(max(0.0, args.start_at - time.time()))
    got = eventloop.run(run_variant(args.n, audio, emu, Path(args.out) if parts else None, parts), "uvloop")
    if acc is not None:
        got["account"] = acc
    print(json.dumps(got))
    return 0


def spawn(variants: list[str], args: argparse.Namespace, emu: ExternalEmulator, out: Path,
          account_run: bool = False) -> dict[str, dict[str, Any]]:
    """Run ``variants`` at once, a process each, starting together; their results by variant."""
    import json
    import subprocess

    start_at = time.time() + 4.0  # time enough for each worker's imports
    procs = {}
    for v in variants:
        cmd = [sys.executable, __file__, "--worker", v, "--base-url", emu.base_url, "--cert", emu.cert,
               "--out", str(out / v.replace(", ", "-").replace(" ", "_")), "--n", str(args.n),
               "--seconds", str(args.seconds), "--start-at", str(start_at)] + (["--account-run"] if account_run else [])
        procs[v] = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    got = {}
    for v, proc in procs.items():
        stdout, _ = proc.communicate(timeout=args.seconds * 6 + 120)
        if proc.returncode != 0:
            raise RuntimeError(f"worker {v!r} failed with exit code {proc.returncode}")
        got[v] = json.loads(stdout.strip().splitlines()[-1])
    return got


def main() -> int:
    import subprocess

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="replace this section of bench/BENCHMARKS.md")
    ap.add_argument("--n", type=int, default=5, help="concurrent sessions per variant (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=8,
                    help="rounds, each running every variant in turn (default %(default)s)")
    ap.add_argument("--seconds", type=float, default=20.0,
                    help="audio per session, s (default %(default)s; the candidate track is 24.7 s)")
    ap.add_argument("--parts", action=argparse.BooleanOptionalAction, default=True,
                    help="also run the session-only and track-only taps, to split the cost (default on)")
    ap.add_argument("--account", action=argparse.BooleanOptionalAction, default=True,
                    help="after the rounds, one tapped run with the tap's entry points timed (default on)")
    for hidden in ("--worker", "--base-url", "--cert", "--out"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    ap.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--account-run", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    out = OUT / "tap"
    shutil.rmtree(out, ignore_errors=True)
    names = list(VARIANTS) if args.parts else ["untapped", "tapped"]
    rows: dict[str, list[dict[str, float]]] = {v: [] for v in names}
    load = [subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()]
    with ExternalEmulator() as emu:
        for r in range(args.rounds):
            for v in names if r % 2 == 0 else names[::-1]:
                got = spawn([v], args, emu, out / str(r))[v]
                rows[v].append(got)
                print(f"round {r + 1} {v}: {got['per_session_pct']:.3f} % per session, "
                      f"lag p99 {got['lag_p99']:.1f} ms", file=sys.stderr)
        load.append(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
        acc = spawn(["tapped"], args, emu, out / "account", account_run=True)["tapped"] if args.account else None
    audio = to_int16(load_mono(CANDIDATE, 48_000))[: int(args.seconds * 48_000)]
    publish(TITLE, report(rows, args, frame_costs(audio), acc, load), args.write)
    return 0


def frame_costs(audio: np.ndarray, batches: int = 7) -> dict[str, float]:
    """µs per 20 ms frame, measured alone in process CPU time (best of ``batches`` passes over the audio, so a busy
    machine's stalls drop out): the tap's whole frame path; the mic audio's write as the tap does it (raw) and as the
    workbench's own recorder does it (libsndfile's FLAC encode), in the tap's 200 ms blocks; and the compression of
    the raw file to FLAC after close, per frame of audio."""
    import tempfile

    track = PacedTrack(audio)
    whole_mono = audio[: len(track.frames) * FRAME]
    mono = [whole_mono[i:i + 10 * FRAME] for i in range(0, whole_mono.size, 10 * FRAME)]  # as the tap batches
    whole, raw, flac, compress = [], [], [], []
    with tempfile.TemporaryDirectory() as d:
        for b in range(batches):
            rec = tap.Tap(Path(d) / f"rec{b}")
            rec.track(PacedTrack(audio[:FRAME]))
            t0 = time.process_time()
            for f in track.frames:
                rec._frame(f)
            whole.append((time.process_time() - t0) / len(track.frames) * 1e6)
            for is_raw, out in ((True, raw), (False, flac)):
                mic = Recorder(Path(d) / f"mic{b}{is_raw}", {}, raw_audio=is_raw)
                t0 = time.process_time()
                for i, x in enumerate(mono):
                    mic.mic(0.0, i * 10 * FRAME, x)
                out.append((time.process_time() - t0) / len(track.frames) * 1e6)
                stream = mic._audio["mic"]
                if is_raw:
                    stream.close()
                    t0 = time.process_time()
                    stream.compress()
                    compress.append((time.process_time() - t0) / len(track.frames) * 1e6)
                mic.close()
                mic.wait_compressed()
            rec.close()
            rec.wait_compressed()
    return {"frame_us": min(whole), "raw_us": min(raw), "flac_us": min(flac), "compress_us": min(compress)}


def report(rows: dict[str, list[dict[str, float]]], args: argparse.Namespace, costs: dict[str, float],
           acc: dict[str, Any] | None, load: list[str]) -> str:
    def cpu(v: str) -> str:
        xs = [r["per_session_pct"] for r in rows[v]]
        return f"{np.nanmedian(xs):.2f} ({', '.join(f'{x:.2f}' for x in xs)})"

    def lag(v: str, key: str) -> str:
        xs = [r[key] for r in rows[v]]
        return f"{np.nanmedian(xs):.1f} ({', '.join(f'{x:.0f}' for x in xs)})"

    def diffs(v: str) -> list[float]:
        return [t["per_session_pct"] - u["per_session_pct"] for u, t in zip(rows["untapped"], rows[v], strict=True)]

    med = float(np.nanmedian(diffs("tapped")))
    lines = [
        f"Load (`uptime`) before the rounds: {load[0]}; after: {load[-1]}.",
        "",
        f"{args.rounds} rounds; in each, {', '.join(rows)} in turn (the order reversed every other round), each alone "
        f"in a process of its own with "
        f"{args.n} sessions (uvloop), {args.seconds:g} s of the candidate track each; the emulator in its own "
        "process. CPU is each process's CPU time over the window in which all its sessions stream, per second of "
        "audio its sessions received in that window, in % of one core per session (median, then each round; the "
        f"sessions kept {np.nanmin([r['realtime'] for v in rows.values() for r in v]):.0%} of real time or better; "
        "nan: a process so starved that its sessions never all streamed at once). "
        "Loop lag: each process's own 100 ms sampler in the same window, ms (median over rounds, then each round).",
        "",
        "| variant | CPU % of a core per session | loop lag p50 | p99 | max |",
        "|---|---|---|---|---|",
    ]
    for v in rows:
        lines.append(f"| {v} | {cpu(v)} | {lag(v, 'lag_p50')} | {lag(v, 'lag_p99')} | {lag(v, 'lag_max')} |")
    lines += ["", f"Tapped − untapped, per session: {med:+.2f} % of one core (median; rounds "
              f"{', '.join(f'{d:+.2f}' for d in diffs('tapped'))}); target < {TARGET_PCT} %: "
              + (f"met ({TARGET_PCT - med:.2f} under)." if med < TARGET_PCT
                 else f"NOT met ({med - TARGET_PCT:.2f} over).")]
    split = [f"{part.removeprefix('tapped, ')} {float(np.nanmedian(diffs(part))):+.2f} % "
             f"(rounds {', '.join(f'{x:+.2f}' for x in diffs(part))})"
             for part in ("tapped, session only", "tapped, track only") if part in rows]
    if split:
        lines.append(f"Split (the client tapped in both): {'; '.join(split)}.")
    lag_d = [t["lag_p99"] - u["lag_p99"] for u, t in zip(rows["untapped"], rows["tapped"], strict=True)]
    lines.append(f"Loop lag p99, tapped − untapped: {float(np.nanmedian(lag_d)):+.1f} ms (median; rounds "
                 f"{', '.join(f'{d:+.0f}' for d in lag_d)}).")
    if acc is not None:
        lines += ["", f"What costs what: one more tapped run alone ({args.n} sessions; CPU "
                  f"{acc['per_session_pct']:.2f} % per session), each of the tap's entry points timed in thread CPU "
                  "time (its own time: what it spends in another entry point counts there), over the whole run, in % "
                  "of one core per session per second of audio; notes run on the user's path, the tick records them "
                  "every 200 ms. "
                  "Not timed: the wire tap's own work on each frame (it hands its events to the notes).", "",
                  "| entry point | calls | µs a call | % of a core per session | longest call, callees in: CPU ms "
                  "| wall ms |",
                  "|---|---|---|---|---|---|"]
        total = 0.0
        for label, (calls, secs, cpu_max, wall_max) in acc["account"].items():
            share = 100 * secs / (args.n * args.seconds)
            total += share
            lines.append(f"| {label} | {calls} | {1e6 * secs / max(1, calls):.0f} | {share:.3f} | "
                         f"{1e3 * cpu_max:.2f} | {1e3 * wall_max:.2f} |")
        lines.append(f"| all | | | {total:.3f} | | |")
    lines += ["", "The tap's frame path measured alone after the rounds (best of 7 passes, in a warm loop): "
              f"{costs['frame_us']:.0f} µs a frame ({costs['frame_us'] * 50 / 1e4:.2f} % of a core per session at 50 "
              f"frames a second). The mic audio's write, in the tap's 200 ms blocks: raw, as the tap writes it, "
              f"{costs['raw_us']:.1f} µs a frame; FLAC-encoded as it comes by libsndfile, as the workbench's own "
              f"recorder writes it, {costs['flac_us']:.1f} µs. The raw file's compression to FLAC after close, in a "
              f"thread, outside the rounds' window: {costs['compress_us']:.1f} µs per frame of audio "
              f"({costs['compress_us'] * 50 / 1e4:.2f} % of a core per second of audio, spent once at the end). "
              "Measured in a warm loop, these are far below their share in the rounds above, where the user's bridge "
              "runs between the tap's calls and each call starts from cold caches."]
    return section(TITLE, "\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
