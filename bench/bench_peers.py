"""The workbench's bridge against pipecat's Gemini Live pipeline: same audio, same emulator, interleaved, one run.

Run:  .venv/bin/python bench/bench_peers.py [--write] [--rounds R] [--n 1,10] [--no-install]

pipecat-ai comes from the registry into ``bench/.peers-venv`` (git-ignored; created here on first use, or by
``make peers-venv``), so the project's own dependencies stay clean; ``bench/peers_pipecat.py`` runs inside it
(its docstring says how pipecat's service is pointed at the emulator and what stands in for its transport).
The workbench side runs ``bridge.run_session`` in a process of its own (this script with ``--workbench-child``,
on uvloop as ``workbench run``), its microphone a ``FilePlayerTrack`` handed to the bridge directly: both
systems get the same 20 ms frames of 48 kHz audio at the same real-time pace, with no WebRTC on either side
(bench_session.py and bench_load.py measure the workbench through WebRTC), and under DTX neither gets the
all-zero frames.  The Live API emulator runs in a third process (``--emulator-child``, ``ideal`` profile,
audio outside an activity discarded and logged) and keeps its own receive log with ``time.monotonic()``
times, which every process on this machine shares: end-of-turn latency is the emulator's receive time of
ActivityEnd − (the time frame 0 was due + the labelled end of the answer).

Audio: the bundled candidate track (3 labelled answers) with one pause inside each answer widened to a
thinking pause of 0.6, 1.2 and 2.0 s (digital silence, so frames stop there under DTX).  Any ``*.labels.txt``
beside a ``.flac``/``.wav`` in ``recordings/speech/`` (the real-speech set of the end-of-turn issue, when it
lands) is played too.  A false cut-off is an ActivityEnd the emulator received inside a labelled answer.
Settings: each system's defaults (workbench: energy, silence 700 ms; pipecat: Silero VAD stop_secs 0.2 and
smart-turn v3), pipecat matched to the workbench's silence window (stop_secs 0.7), and the workbench matched to
pipecat's turn policy with its own end model (``end_model="smart-turn"``: Smart Turn v3.2 scored after 200 ms of
silence, threshold 0.5, "incomplete" waits up to 3000 ms, as pipecat's smart-turn ``stop_secs``).
``--write`` replaces the "## Against the peers" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import CANDIDATE, OUT, ROOT, arg_parser, pct, process_cpu, publish, section  # noqa: E402

TITLE = "Against the peers"
HERE = Path(__file__).resolve().parent
VENV = HERE / ".peers-venv"
VENV_PY = VENV / "bin" / "python"
PIPECAT_REQ = "pipecat-ai[google,silero]==1.14.0"
SPEECH_SET = ROOT / "recordings" / "speech"
THINK_S = (0.6, 1.2, 2.0)  # the thinking pause put into answer 1, 2, 3
TAIL_S = 1.5
AFTER_S = 2.0
OUTSIDE = ("audio_outside_activity", "audio_after_activity_end")
ORDER = ("activity_start_while_open", "activity_end_without_start", "message_before_setup",
         "message_before_setup_complete", "setup_repeated")


# -- the venv ------------------------------------------------------------------------------------------------------

def fail(msg: str) -> None:
    print(f"workbench: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def ensure_venv(install: bool) -> str:
    """pipecat's venv, created and filled from the registry when missing; its pipecat version."""
    if not VENV_PY.exists():
        if not install:
            fail(f"{VENV} is missing (run without --no-install, or make peers-venv)")
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
        subprocess.check_call([str(VENV_PY), "-m", "pip", "install", "-q", "--upgrade", "pip"])
    probe = [str(VENV_PY), "-c", "import importlib.metadata as m; print(m.version('pipecat-ai'))"]
    got = subprocess.run(probe, capture_output=True, text=True)
    if got.returncode != 0:
        if not install:
            fail(f"pipecat-ai is not installed in {VENV}")
        subprocess.check_call([str(VENV_PY), "-m", "pip", "install", "-q", PIPECAT_REQ])
        got = subprocess.run(probe, capture_output=True, text=True, check=True)
    return got.stdout.strip()


# -- audio ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Track:
    name: str
    audio: np.ndarray  # int16 mono 48 kHz
    labels: list[tuple[float, float]]


def thinking_track() -> Track:
    """The candidate track with the longest pause inside each answer widened to ``THINK_S`` (digital silence)."""
    from workbench.analysis.sweep import read_labels
    from workbench.core.pcm import to_int16
    from workbench.store.audiofile import load_mono

    x = to_int16(load_mono(CANDIDATE, 48_000))
    labels = read_labels(CANDIDATE.with_suffix(".labels.txt"))
    frames = x[: x.size // 960 * 960].reshape(-1, 960)
    quiet = ~frames.any(axis=1) | (np.sqrt((frames.astype(float) ** 2).mean(axis=1)) < 32768 * 10 ** (-50 / 20))
    pieces, cursor, shift, new_labels = [], 0, 0.0, []
    for (a, b), think in zip(labels, THINK_S, strict=False):
        i0, i1 = int(a / 0.02) + 5, int(b / 0.02) - 5
        best, run_start, best_at = 0, None, None  # the longest quiet run inside the answer
        for i in range(i0, i1):
            if quiet[i] and run_start is None:
                run_start = i
            if (not quiet[i] or i == i1 - 1) and run_start is not None:
                if i - run_start > best:
                    best, best_at = i - run_start, run_start
                run_start = None
        mid = (best_at + best // 2) * 960
        add = int(think * 48_000) - best * 960
        pieces += [x[cursor:mid], np.zeros(max(add, 0), np.int16)]
        cursor = mid
        new_labels.append((a + shift, b + shift + max(add, 0) / 48_000))
        shift += max(add, 0) / 48_000
    pieces.append(x[cursor:])
    # the widened pause must be digital silence end to end, as a muted mic in a pause would be
    out = np.concatenate(pieces)
    return Track("candidate + thinking pauses " + "/".join(f"{t:g}" for t in THINK_S) + " s", out, new_labels)


def labelled_beside(audio: Path) -> Track:
    from workbench.analysis.sweep import read_labels
    from workbench.core.pcm import to_int16
    from workbench.store.audiofile import load_mono

    labels = audio.with_suffix(".labels.txt")
    if not labels.exists():
        fail(f"{audio} has no {labels.name} beside it")
    return Track(audio.name, to_int16(load_mono(audio, 48_000)), read_labels(labels))


def tracks(candidate: bool = True, extra: list[str] | None = None) -> list[Track]:
    """The candidate track with thinking pauses, then every labelled recording in ``recordings/`` (the real-speech
    set with thinking pauses, ``recordings/thinking.flac``, once it lands) and ``recordings/speech/``, then
    ``extra``."""
    out = [thinking_track()] if candidate else []
    found = [p for d in (ROOT / "recordings", SPEECH_SET) if d.is_dir() for p in sorted(d.iterdir())
             if p.suffix in (".flac", ".wav") and p.with_suffix(".labels.txt").exists() and p != CANDIDATE]
    return out + [labelled_beside(p) for p in found + [Path(x) for x in extra or []]]


# -- child processes -----------------------------------------------------------------------------------------------

def emulator_child(log_path: str) -> int:
    """The emulator in this process until SIGTERM, then its receive log (monotonic times) into ``log_path``."""
    from workbench.emulator import Emulator, EmulatorConfig
    from workbench.io import eventloop

    async def serve() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with Emulator(EmulatorConfig(profile="ideal")) as emu:
            print(json.dumps({"base_url": emu.base_url, "cert": str(emu.cert_path)}), flush=True)
            await stop.wait()
            with open(log_path, "w") as fh:
                for e in emu.log:
                    fh.write(json.dumps({"t": e.t_mono, "conn": e.conn, "dir": e.direction, "kind": e.kind,
                                         "n_bytes": e.n_bytes, "detail": e.detail}) + "\n")
                for v in emu.violations:
                    fh.write(json.dumps({"t": v.t_mono, "conn": v.conn, "dir": "violation", "kind": v.rule,
                                         "detail": v.detail}) + "\n")

    eventloop.run(serve())
    return 0


def workbench_child(args: argparse.Namespace) -> int:
    """N workbench sessions on uvloop, microphones handed to the bridge directly; the same JSON as peers_pipecat."""
    from workbench.core.params import TurnParams
    from workbench.emulator.certs import client_context
    from workbench.io import bridge, eventloop, live
    from workbench.io.media import FilePlayerTrack

    audio = np.fromfile(args.audio, dtype=np.int16)

    async def sample(cpu: list, lag: list) -> None:  # the same sampler as peers_pipecat.sample
        loop = asyncio.get_running_loop()
        n = 0
        while True:
            due = loop.time() + 0.05
            await asyncio.sleep(0.05)
            cpu.append((time.monotonic(), process_cpu()))
            n += 1
            if n % 2 == 0:
                lag.append((loop.time() - due) * 1000.0)

    async def main() -> dict[str, Any]:
        ctx = client_context(Path(args.cert))
        cpu: list = []
        lag: list = []
        sampler = asyncio.create_task(sample(cpu, lag))
        metas: list[dict[str, Any]] = [{} for _ in range(args.n)]

        async def one(i: int) -> None:
            settings = live.LiveSettings(base_url=args.base_url, ssl_context=ctx, greeting_prompt=None)
            params = TurnParams(**json.loads(args.params)) if args.params else TurnParams()
            cfg = bridge.SessionConfig(params=params, live=settings, dtx=args.dtx, tail_s=TAIL_S,
                                       response_timeout_s=AFTER_S, name=f"peers-{i}")
            track = FilePlayerTrack(audio, dtx=args.dtx, tail_s=TAIL_S)
            r = await bridge.run_session(track, cfg, Path(args.out) / f"wb-{i}")
            metas[i].update(t_start=track.t_start, t_end=track.t_start + track.duration_s if track.t_start else None,
                            error=r.error)

        await asyncio.gather(*(one(i) for i in range(args.n)))
        sampler.cancel()
        return {"sessions": metas, "cpu": cpu, "lag_ms": lag}

    print(json.dumps(eventloop.run(main(), "uvloop")), flush=True)
    return 0


class EmulatorProc:
    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory()
        self.log_path = Path(self._dir.name) / "emu.jsonl"
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--emulator-child",
                                      str(self.log_path)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        info = json.loads(self.proc.stdout.readline())
        self.base_url, self.cert = info["base_url"], info["cert"]

    def stop(self) -> list[dict[str, Any]]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        entries = [json.loads(ln) for ln in self.log_path.read_text().splitlines()]
        self._dir.cleanup()
        return entries


@dataclass(frozen=True)
class System:
    key: str
    title: str
    pipecat: bool
    knob: float | None = None  # pipecat: VADParams.stop_secs (None: its defaults)
    params: tuple[tuple[str, Any], ...] = ()  # workbench: TurnParams fields (empty: the defaults)
    at_n: bool = True  # also measured at N > 1 (CPU, loop lag)


# The workbench with pipecat's turn policy: end model scored after 200 ms of silence (pipecat's Silero
# stop_secs), threshold 0.5 and a 3 s wait when it says incomplete (pipecat's smart-turn defaults).
SMART = (("end_model", "smart-turn"), ("silence_ms", 200.0), ("end_threshold", 0.5), ("max_silence_ms", 3000.0))
SYSTEMS = (
    System("wb", "workbench, defaults (energy, silence 700 ms)", False),
    System("wb_smart", "workbench, Smart Turn (energy, smart-turn v3.2 after 200 ms, p ≥ 0.5, ≤ 3000 ms)",
           False, params=SMART),
    System("pc", "pipecat, defaults (Silero stop_secs 0.2 + smart-turn v3)", True),
    System("pc_matched", "pipecat, matched (Silero stop_secs 0.7 + smart-turn v3)", True, 0.7, at_n=False),
)
# (workbench system, pipecat system it is compared with) for the ratios: defaults with defaults, like with like
PAIRS = (("wb", "pc"), ("wb_smart", "pc"), ("wb", "pc_matched"))


def run_child(system: System, emu: EmulatorProc, raw: Path, n: int, dtx: bool, out: Path) -> dict[str, Any]:
    if system.pipecat:
        cmd = [str(VENV_PY), str(HERE / "peers_pipecat.py"), "--base-url", emu.base_url, "--cert", emu.cert,
               "--audio", str(raw), "--n", str(n), "--tail-s", str(TAIL_S), "--after-s", str(AFTER_S)]
        if system.knob:
            cmd += ["--stop-secs", str(system.knob)]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--workbench-child", "--base-url", emu.base_url,
               "--cert", emu.cert, "--audio", str(raw), "--n", str(n), "--out", str(out)]
        if system.params:
            cmd += ["--params", json.dumps(dict(system.params))]
    if dtx:
        cmd.append("--dtx")
    t0 = time.monotonic()
    got = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    if got.returncode != 0:
        raise RuntimeError(f"{system.key} child failed ({got.returncode}): {got.stderr[-2000:]}")
    out = json.loads(got.stdout.strip().splitlines()[-1])
    out.update(t_run=(t0, time.monotonic()), system=system.key, n=n, dtx=dtx)
    return out


# -- analysis ------------------------------------------------------------------------------------------------------

def cpu_per_session(run: dict[str, Any]) -> tuple[float, float]:
    """% of one core per session while all N stream (last start .. first end), and that window's length (s)."""
    starts = [s["t_start"] for s in run["sessions"]]
    ends = [s["t_end"] for s in run["sessions"]]
    lo, hi = max(starts), min(ends)
    inside = [c for c in run["cpu"] if lo <= c[0] <= hi]
    if len(inside) < 2:
        return float("nan"), 0.0
    win = inside[-1][0] - inside[0][0]
    return 100 * (inside[-1][1] - inside[0][1]) / win / len(starts), win


def conns_of(run: dict[str, Any], log: list[dict[str, Any]]) -> set[int]:
    a, b = run["t_run"]
    first: dict[int, float] = {}
    for e in log:
        first.setdefault(e["conn"], e["t"])
    return {c for c, t in first.items() if a <= t <= b}


def wire_figures(run: dict[str, Any], log: list[dict[str, Any]], track: Track) -> dict[str, Any]:
    """From the emulator's log of this run's connection(s): end-of-turn latencies (N = 1), cut-offs, violations."""
    conns = conns_of(run, log)
    mine = [e for e in log if e["conn"] in conns]
    viol = [e for e in mine if e["dir"] == "violation"]
    out: dict[str, Any] = {
        "outside": sum(e["kind"] in OUTSIDE for e in viol),
        "empty": sum(e["kind"] == "empty_activity" for e in viol),
        "order": sum(e["kind"] in ORDER for e in viol),
        "activities": sum(e["dir"] == "in" and e["kind"] == "activity_end" for e in mine),
        "latency_ms": [], "cutoffs": 0, "answers": 0, "missed": 0, "cut_answers": 0, "bad": 0,
    }
    if run["n"] != 1:
        return out
    t0 = run["sessions"][0]["t_start"]
    ae = np.sort([e["t"] for e in mine if e["dir"] == "in" and e["kind"] == "activity_end"])
    for j, (a, b) in enumerate(track.labels):
        nxt = track.labels[j + 1][0] if j + 1 < len(track.labels) else float("inf")
        out["answers"] += 1
        cuts = int(np.sum((ae > t0 + a + 0.05) & (ae < t0 + b)))
        out["cutoffs"] += cuts
        out["cut_answers"] += cuts > 0
        after = ae[(ae >= t0 + b) & (ae < t0 + nxt)]
        if after.size:
            out["latency_ms"].append(float((after[0] - (t0 + b)) * 1000))
        else:
            out["missed"] += 1
        # Not answered whole: cut off inside, or never ended (merged into the next turn, or the session ran out
        # with the turn open). A turn that does not end cannot be cut off, so both count, once per answer.
        out["bad"] += cuts > 0 or not after.size
    return out


def track_info(trs: list[Track], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"name": t.name, "duration_s": t.audio.size / 48_000, "answers": len(t.labels),
             "rounds": len({r["round"] for r in runs if r["track_name"] == t.name})} for t in trs]


def measure(rounds: int, ns: list[int], trs: list[Track]) -> list[dict[str, Any]]:
    """Interleaved: in each round every system runs each (track, DTX) at N = 1, then each N > 1 without DTX."""
    import shutil

    shutil.rmtree(OUT / "peers", ignore_errors=True)
    (OUT / "peers").mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    raws = []
    for k, tr in enumerate(trs):
        raw = OUT / "peers" / f"track-{k}.s16"
        tr.audio.astype(np.int16).tofile(raw)
        raws.append(raw)
    emu = EmulatorProc()
    try:
        for r in range(rounds):
            for n in ns:
                for k, raw in enumerate(raws):
                    for dtx in ((False, True) if n == 1 else (False,)):
                        systems = SYSTEMS if n == 1 else [s for s in SYSTEMS if s.at_n]
                        for sysm in systems:
                            where = OUT / "peers" / f"{sysm.key}-r{r}-n{n}-t{k}-{'dtx' if dtx else 'nodtx'}"
                            run = run_child(sysm, emu, raw, n, dtx, where)
                            run.update(track=k, track_name=trs[k].name, round=r)
                            runs.append(run)
                            run["load"] = os.getloadavg()[0]  # the machine is shared: say how busy it was
                            cpu, win = cpu_per_session(run)
                            print(f"round {r + 1} N={n} track {k} dtx={dtx} {sysm.key}: cpu {cpu:.2f} %/session "
                                  f"(window {win:.1f} s), lag p99 {pct(run['lag_ms'], 99):.1f} ms",
                                  file=sys.stderr, flush=True)
    finally:
        log = emu.stop()
    for run in runs:
        run["wire"] = wire_figures(run, log, trs[run["track"]])
        run["cpu_pct"], run["window_s"] = cpu_per_session(run)
        run.pop("cpu")
    return runs


def report(runs: list[dict[str, Any]], tinfo: list[dict[str, Any]], version: str) -> str:
    """The section: per track the end-of-turn and wire table, then CPU (first track), then the ratios."""
    def pick(**kw: Any) -> list[dict[str, Any]]:
        return [r for r in runs if all(r[k] == v for k, v in kw.items())]

    def ratio(wb: float, pc: float) -> str:
        if not (wb == wb and pc == pc):
            return "–"
        if wb == 0:
            return "1.00×" if pc == 0 else "∞"
        return f"{pc / wb:.2f}×"

    loads = [r["load"] for r in runs if "load" in r]
    lines = [
        (f"Load average (1 min, `os.getloadavg`) after each child run: {min(loads):.1f}–{max(loads):.1f}, median "
         f"{np.median(loads):.1f}, on {os.cpu_count()} cores (other work shares the machine).\n\n" if loads else "")
        + f"pipecat-ai {version} (registry, in `bench/.peers-venv`) against the workbench; the systems in turn in "
        "each round, one emulator process for all (`ideal` profile). Tracks: "
        + "; ".join(f"{t['name']} ({t['duration_s']:.1f} s, {t['answers']} answers, {t['rounds']} rounds)"
                    for t in tinfo) + ".",
        "",
        "How pipecat was pointed at the emulator: `GeminiLiveLLMService(http_options=HttpOptions(base_url=...))`, "
        "which pipecat passes to `genai.Client` unchanged (it only adds an `x-goog-api-client` header); the "
        "emulator's certificate through `SSL_CERT_FILE`. Gemini's VAD disabled (`GeminiVADParams(disabled=True)`), "
        "so pipecat sends ActivityStart/End from its own turn signals. No greeting on either side. Both get the "
        "same 20 ms frames of 48 kHz audio at real-time pace in-process (no WebRTC on either side; under DTX the "
        "all-zero frames are not delivered); pipecat's frames are resampled to 16 kHz with its own stream "
        "resampler, as its input transport does. pipecat runs on asyncio's loop (as its runner does), the "
        "workbench on uvloop (as `workbench run` does).",
        "",
        "End of turn: the emulator's receive time of ActivityEnd − (time frame 0 was due + the labelled end of "
        "the answer), at N = 1, the silence window included (what the user waits); both clocks are the machine's "
        "`CLOCK_MONOTONIC`. *Answers ended*: answers with an ActivityEnd between their end and the next answer's "
        "start (the rest were merged into the next turn or never ended). A *false cut-off* is an ActivityEnd "
        "received inside a labelled answer (during a thinking pause; an answer with several pauses can be cut "
        "several times, so the count is given with its rate per answer). *Answers missed*: answers cut off at least "
        "once or not ended (merged or left open), each counted once: the figure the ratios compare, since a turn "
        "that never ends cuts nothing off (a merged turn counts as a miss). *Outside*: audio chunks the emulator got "
        "outside an activity; *empty*: activities with no audio; *order*: ActivityStart while open, ActivityEnd "
        "with none open, messages before setup.",
    ]
    summary: dict[tuple[str, str, Any], dict[str, float]] = {}
    for t in tinfo:
        lines += ["", f"{t['name']}:", "",
                  "| system | frames in silence | end of turn p50 | p95 | answers ended | false cut-offs "
                  "| answers missed (cut off or not ended) | outside | empty | order |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for s in SYSTEMS:
            for dtx in (False, True):
                rs = pick(system=s.key, n=1, dtx=dtx, track_name=t["name"])
                if not rs:
                    continue
                lat = [x for r in rs for x in r["wire"]["latency_ms"]]
                ans = sum(r["wire"]["answers"] for r in rs)
                cut = sum(r["wire"]["cutoffs"] for r in rs)
                ended = ans - sum(r["wire"]["missed"] for r in rs)
                bad = sum(r["wire"]["bad"] for r in rs)
                vals = {k: sum(r["wire"][k] for r in rs) for k in ("outside", "empty", "order")}
                summary[(t["name"], s.key, dtx)] = {"p50": pct(lat, 50), "p95": pct(lat, 95),
                                                    "cut": cut / max(ans, 1), "ended": ended / max(ans, 1),
                                                    "bad": bad / max(ans, 1), **vals}
                lines.append(f"| {s.title} | {'stop (DTX)' if dtx else 'keep coming'} | {pct(lat, 50):.0f} ms | "
                             f"{pct(lat, 95):.0f} ms | {ended}/{ans} | {cut} ({cut / max(ans, 1):.2f} an answer) | "
                             f"{bad}/{ans} | {vals['outside']} | "
                             f"{vals['empty']} | {vals['order']} |")
    first = tinfo[0]["name"]
    ns = sorted({r["n"] for r in runs if r["track_name"] == first})
    lines += [
        "",
        f"CPU ({first}): each system's process (all threads) while all N sessions stream (from the last "
        "session's frame 0 to the first one's last frame), divided by N: % of one core per session; the window's "
        "length beside it. Loop lag: 100 ms sleep overshoot sampled the same way in both processes, p99 over the "
        "whole run (connect included). Median of the rounds, spread in brackets; without DTX. The machine is "
        "shared with other work, so absolute figures drift; compare within the table (same rounds). At N = 10 "
        "each process also holds its 10 paced sources.",
        "",
        "| system | N | CPU per session | window | loop lag p99 |",
        "|---|---|---|---|---|",
    ]
    for n in ns:
        for s in SYSTEMS:
            rs = pick(system=s.key, n=n, dtx=False, track_name=first)
            if not rs:
                continue
            c = [r["cpu_pct"] for r in rs]
            lag = [pct(r["lag_ms"], 99) for r in rs]
            win = np.median([r["window_s"] for r in rs])
            summary[(first, s.key, f"cpu{n}")] = {"cpu": float(np.median(c)), "lag": float(np.median(lag))}
            lines.append(f"| {s.title} | {n} | {np.median(c):.2f} % ({min(c):.2f}–{max(c):.2f}) | {win:.1f} s | "
                         f"{np.median(lag):.1f} ms ({min(lag):.1f}–{max(lag):.1f}) |")
    lines += ["", "Ratios, pipecat ÷ workbench, one run, for each pair compared: defaults with defaults, the "
              "workbench's Smart Turn with pipecat's defaults (the same turn policy: a VAD stop then an end model), "
              "the workbench's defaults with pipecat matched to its 700 ms window; > 1 means the workbench is ahead "
              "(for answers ended, workbench ÷ pipecat); values workbench vs pipecat. *Answers missed* is the "
              "cut-off figure compared (cut off or not ended, per answer).", "",
              "| figure | ratio | workbench ahead? |", "|---|---|---|"]

    behind: list[str] = []

    def row(name: str, w: float, p: float, higher_better: bool = False) -> None:
        """One ratio, the workbench's value first; > 1 means the workbench is ahead."""
        worse, better = (p, w) if higher_better else (w, p)
        ahead = "yes" if better > worse else ("tie" if better == worse else "**no**")
        if ahead == "**no**":
            behind.append(name)
        lines.append(f"| {name} | {ratio(worse, better)} ({w:.2f} vs {p:.2f}) | {ahead} |")

    short = {"wb": "workbench defaults", "wb_smart": "workbench Smart Turn", "pc": "pipecat defaults",
             "pc_matched": "pipecat matched"}
    for wk, pk in PAIRS:
        pair = f"{short[wk]} vs {short[pk]}"
        for t in tinfo:
            for dtx in (False, True):
                w, p = summary.get((t["name"], wk, dtx)), summary.get((t["name"], pk, dtx))
                if not (w and p):
                    continue
                tag = f"{pair}, {'DTX' if dtx else 'no DTX'}, {t['name']}"
                row(f"end of turn p50, {tag}", w["p50"], p["p50"])
                row(f"end of turn p95, {tag}", w["p95"], p["p95"])
                row(f"answers ended, {tag}", w["ended"], p["ended"], higher_better=True)
                row(f"answers missed (cut off or not ended), {tag}", w["bad"], p["bad"])
        for n in ns:
            w, p = summary.get((first, wk, f"cpu{n}")), summary.get((first, pk, f"cpu{n}"))
            if w and p:
                row(f"CPU per session, N = {n}, {pair}", w["cpu"], p["cpu"])
                row(f"loop lag p99, N = {n}, {pair}", w["lag"], p["lag"])
    lines += ["", "Where the workbench is behind: " + ("; ".join(behind) if behind else "nowhere") + "."]
    lines += [
        "",
        "Why, from pipecat's source (1.14) and the runs above:",
        "",
        "- *End of turn, defaults*: the workbench ends every turn its 700 ms window after the speech (give or take "
        "a 10 ms tick), frames or no frames. pipecat's turn ends when its Silero VAD has counted `stop_secs` "
        "(0.2 s) of non-speech 32 ms windows and smart-turn v3 (ONNX, the last 8 s, on an executor thread) then "
        "judges it complete; when it says incomplete, pipecat waits for smart-turn's own `stop_secs` (3 s) of "
        "audio. That is sooner than 700 ms only when the model answers fast: on a quiet machine pipecat's p50 "
        "on thinking.flac was 586 ms against the workbench's 688 ms (2026-12-01, load ≈ 1); with the machine "
        "loaded its inference takes seconds and its p50 goes to ~2 s.",
        "- *The workbench's Smart Turn against pipecat's* (the same policy: a stop after 200 ms, then the model, "
        "3 s when it says incomplete): its model runs in one shared worker process per runner "
        "(`workbench.io.endmodel.EndModelWorker`, issue 15), asked after 200 ms of silence; the turn ends at the "
        "score or the 3000 ms cap. The scores' own times are in the recordings (`end_score` events with the "
        "silence they were made at, `bench/out/peers/wb_smart-*`): read them to see whether the model or the "
        "policy set the latency. Under load the scores come late and the turns end at the cap (the 2026-12-01 "
        "run of this section, load 9–15: p50 2.0–3.0 s).",
        "- *Frames stopping (DTX)*: pipecat's `VADController(audio_idle_timeout=1.0)` forces the VAD to stop 1 s "
        "(wall clock) after the last frame, but smart-turn's 3 s fallback counts the *audio it receives*; when "
        "smart-turn judged the turn incomplete and no frames come, the turn does not end until speech resumes, "
        "so the answer merges into the next one (*answers ended* short of all). The workbench's silence, and its "
        "model's wait, are measured on the clock, so a gap in frames is silence.",
        "- *False cut-offs and answers missed*: any end-of-turn rule that fires before a thinking pause ends cuts "
        "the answer; a turn that never ends cuts nothing but merges the answer into the next turn. Counting only "
        "cut-offs made pipecat under DTX look ahead (its turns did not end); *answers missed* counts both, once "
        "an answer, and is what the ratios compare.",
        "- *Loop lag*: p99 over the whole run, connect and start-up included, 100 ms sleeps; the workbench's "
        "process imports the SDK's types and builds its session on the loop before the first frame, pipecat's "
        "before the pipeline starts. On a loaded machine both processes wait for a core and the figure is the "
        "machine's more than either system's.",
        "- *CPU*: pipecat runs Silero (ONNX) on every 32 ms window and smart-turn inference at every VAD stop, each "
        "on an executor thread (`run_in_executor`), and passes each 20 ms frame through its processors' queues and "
        "tasks; the workbench's default energy detector is arithmetic on the frame and its pipeline is plain calls "
        "on the loop; its Smart Turn row adds the model's inference at each 200 ms pause.",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = arg_parser(__doc__)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--n", default="1,10", help="session counts; end of turn and cut-offs are measured at N = 1")
    ap.add_argument("--no-install", action="store_true", help="fail instead of creating bench/.peers-venv")
    ap.add_argument("--from-runs", help="render saved runs' figures (comma-separated runs.json files) instead")
    ap.add_argument("--save", help="where to save this run's figures (default bench/out/peers/runs.json)")
    ap.add_argument("--speech", action="append", default=[], help="also play this labelled recording")
    ap.add_argument("--no-candidate", action="store_true", help="leave out the candidate track")
    ap.add_argument("--emulator-child", help=argparse.SUPPRESS)
    ap.add_argument("--workbench-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--base-url", help=argparse.SUPPRESS)
    ap.add_argument("--cert", help=argparse.SUPPRESS)
    ap.add_argument("--audio", help=argparse.SUPPRESS)
    ap.add_argument("--dtx", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)  # the workbench child's TurnParams, as JSON
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--n-child", type=int, help=argparse.SUPPRESS)
    args, _ = ap.parse_known_args()
    if args.emulator_child:
        return emulator_child(args.emulator_child)
    if args.workbench_child:
        args.n = args.n_child or int(args.n)
        return workbench_child(args)
    version = ensure_venv(not args.no_install)
    if args.from_runs:  # re-render finished runs' figures (bench/out/peers/runs*.json) without measuring
        runs, tinfo, saved_argv = [], [], []
        for f in args.from_runs.split(","):
            saved = json.loads(Path(f).read_text())
            if isinstance(saved, list):  # saved before the file carried its tracks and command
                trs = tracks(candidate=True, extra=[])[:1]
                for r in saved:
                    r["track_name"] = trs[r["track"]].name
                saved = {"runs": saved, "tracks": track_info(trs, saved),
                         "argv": ["--rounds", str(1 + max(r["round"] for r in saved)), "--n", "1,10", "--write"]}
            runs += saved["runs"]
            tinfo += saved["tracks"]
            saved_argv.append(saved["argv"])
        sys.argv = [sys.argv[0], *saved_argv[0]]  # the section names the command that measured these figures
        commands = [" ".join(["bench/bench_peers.py", *a]) for a in saved_argv]
    else:
        trs = tracks(candidate=not args.no_candidate, extra=args.speech)
        runs = measure(args.rounds, [int(x) for x in args.n.split(",") if x], trs)
        tinfo = track_info(trs, runs)
        name = args.save or str(OUT / "peers" / "runs.json")
        Path(name).write_text(json.dumps({"runs": runs, "tracks": tinfo, "argv": sys.argv[1:]}))
        commands = [" ".join(["bench/bench_peers.py", *sys.argv[1:]])]
    body = report(runs, tinfo, version)
    if len(commands) > 1:
        runs_by = "; then ".join(f"`{c}`" for c in commands)
        body = f"Measured by {runs_by} (rendered together with `--from-runs`).\n\n{body}"
    if any("--speech" in c for c in commands):
        body = ("Besides the candidate track: labelled recordings given with `--speech` (here the real-speech set "
                "with thinking pauses of the end-of-turn issue, `thinking.flac`, read from that work's branch before "
                "it landed; once it is in `recordings/`, this script plays it without being told).\n\n" + body)
    publish(TITLE, section(TITLE, body), args.write)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
