"""The failure lab: each field-report failure and each real-service behaviour as a named scenario, run broken and fixed.

A scenario is two ``Side`` s, each an emulator setup (profile, faults, field overrides) plus bridge
settings.  ``broken`` reproduces the failure: the naive bridge's mistake (``naive`` modes), or the
old settings (resilience off, websockets' keepalive with a pong timeout, a watchdog that
reconnects whatever the server heard).  ``fixed`` runs the same behaviour through the real
bridge (persistent receive loop, clock-measured silence, one writer, the client core's bounded
recovery, keepalive without a pong timeout) against the emulator's ``real`` profile, with
``FIXED_BRIDGE``'s short recovery bounds (tests/test_recovery.py's) so a session that must give
up does so in seconds.  ``bench/bench_recovery.py`` builds its sessions with ``Side`` too.

``run`` / ``run_all`` / ``run_pairs`` are coroutines (Jupyter already runs an event loop); the
sessions only wait on sockets and the clock, so many run at once in one loop.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workbench.core.params import TurnParams
from workbench.core.pcm import MIC_RATE
from workbench.emulator import Emulator, EmulatorConfig, parse_fault
from workbench.io import bridge, live
from workbench.store.recording import Recording, load

# The real bridge's recovery bounds in the lab (tests/test_recovery.py's): shorter than the defaults (watchdog 5 s,
# heard 20 s, dead connection 8 s) so that a server that never answers is given up on within ~15 s.
FIXED_BRIDGE: Mapping[str, Any] = {"watchdog_s": 3.0, "heard_timeout_s": 4.0, "dead_connection_s": 5.0}
# The old settings: no reconnect, no watchdog, and websockets' keepalive scaled down 10x (pings every 20 s with a
# 20 s pong timeout become 2 s / 4 s) so that a late pong closes the connection within a short session.
OLD_BRIDGE: Mapping[str, Any] = {"reconnect": False, "watchdog_s": None, "response_timeout_s": 4.0}
OLD_KEEPALIVE: Mapping[str, Any] = {"ping_interval_s": 2.0, "ping_timeout_s": 4.0}
# The field report's reproductions: pings every 1 s with a 2 s pong timeout on the ideal server (each failure alone).
LAB_LIVE: Mapping[str, Any] = {"close_timeout_s": 1.0}  # every lab session: a close handshake waits 1 s, not 5
RESPONSE_TIMEOUT_S = 3.0  # what diagnose is told: an answer later than this after ActivityEnd is missing
FIGURE_DPI = 72  # the lab draws 2 timelines per scenario: smaller images render twice as fast
REPRO_KEEPALIVE: Mapping[str, Any] = {"ping_interval_s": 1.0, "ping_timeout_s": 2.0}


@dataclass(frozen=True)
class Side:
    """One run of a scenario: the emulator's setup and the bridge's settings (overrides of their defaults)."""

    profile: str = "real"
    faults: tuple[str, ...] = ()
    emu: Mapping[str, Any] = field(default_factory=dict)  # EmulatorConfig fields, over the profile's
    live: Mapping[str, Any] = field(default_factory=dict)  # live.LiveSettings fields
    bridge: Mapping[str, Any] = field(default_factory=dict)  # bridge.SessionConfig fields (naive, watchdog_s, ...)

    def emulator_config(self) -> EmulatorConfig:
        return EmulatorConfig(profile=self.profile, faults=[parse_fault(f) for f in self.faults], **self.emu)

    def session_config(self, emu: Emulator, name: str, *, dtx: bool = True) -> bridge.SessionConfig:
        settings = live.LiveSettings(base_url=emu.base_url, ssl_context=emu.client_ssl_context(), **self.live)
        return bridge.SessionConfig(params=TurnParams(), live=settings, dtx=dtx, name=name, **self.bridge)

    def describe(self) -> str:
        """One line: profile, faults, overrides (the lab's common close timeout left out)."""
        parts = [f"profile {self.profile}", *self.faults]
        parts += [f"{k}={v}" for d in (self.emu, self.live, self.bridge) for k, v in d.items()
                  if (k, v) not in LAB_LIVE.items()]
        return ", ".join(parts)


def old(profile: str = "real", faults: tuple[str, ...] = (), emu: Mapping[str, Any] | None = None,
        live: Mapping[str, Any] | None = None, **bridge_kw: Any) -> Side:
    """A broken side: the old settings (``OLD_BRIDGE``; keepalive pongs never waited for unless ``live`` says)."""
    return Side(profile, faults, dict(emu or {}), {**LAB_LIVE, "ping_timeout_s": None, **(live or {})},
                {**OLD_BRIDGE, **bridge_kw})


def repro(naive: str | None = None, faults: tuple[str, ...] = (), max_queue: int = 16) -> Side:
    """A field-report reproduction: the ideal server, the naive piece in place, resilience off, 1 s / 2 s pings."""
    return Side("ideal", faults, {}, {**LAB_LIVE, **REPRO_KEEPALIVE, "max_queue": max_queue},
                {"naive": naive, "reconnect": False, "watchdog_s": None, "response_timeout_s": 4.0})


def real(faults: tuple[str, ...] = (), emu: Mapping[str, Any] | None = None, live: Mapping[str, Any] | None = None,
         **bridge_kw: Any) -> Side:
    """A fixed side: the real bridge (``FIXED_BRIDGE`` bounds) against the real profile."""
    return Side("real", faults, dict(emu or {}), {**LAB_LIVE, **(live or {})}, {**FIXED_BRIDGE, **bridge_kw})


@dataclass(frozen=True)
class Scenario:
    """A failure, reproduced (``broken``) and survived (``fixed``) on ``seconds`` of the bundled candidate track."""

    what: str
    broken: Side
    fixed: Side
    seconds: float = 7.5  # turn 1 (0.5-5.5 s) and its answer; turn 2 of the track starts at 8.9 s, turn 3 at 18.1 s
    dtx: bool = True
    expect: str = "all answered"  # how the fixed run should end (the start of ``outcome``): "all answered", "gave up"

    @property
    def faults(self) -> tuple[str, ...]:
        return self.broken.faults

    @property
    def naive(self) -> str | None:
        return self.broken.bridge.get("naive")

    def side(self, fixed: bool) -> Side:
        return self.fixed if fixed else self.broken


SCENARIOS: dict[str, Scenario] = {
    # -- the field report (broken on the ideal server, each failure alone) ----------------------------------------
    "receive-once": Scenario("receive loop stops after the greeting: 1011 keepalive ping timeout",
                             repro("receive-once", max_queue=4), real()),
    "frame-count": Scenario("silence counted in frames, frames stop under DTX: no ActivityEnd (Failure B)",
                            repro("frame-count"), real()),
    "two-tasks": Scenario("audio and signals from two tasks: audio after ActivityEnd", repro("two-tasks"),
                          real(), dtx=False),
    "no-response": Scenario("the server ignores ActivityEnd (Failure A)", repro(faults=("no-response:1",)),
                            real(("no-response:1",))),
    "stall": Scenario("the server stalls 5 s (no pongs, nothing sent); the stalled socket still counts open, so "
                      "the first resume is rejected 1011", repro(faults=("stall:5",)), real(("stall:5",))),
    "close-1011": Scenario("the server closes 1011 in the middle of an answer; the resumed handle is a snapshot "
                           "without the turn", repro(faults=("close-1011:mid-turn",)), real(("close-1011:mid-turn",))),
    "go-away": Scenario("goAway after the first answer, then the connection ends", repro(faults=("go-away:1",)),
                        real(("go-away:1",))),
    # -- the real service's behaviours (issue 12), broken = the old settings ----------------------------------------
    # pongs 6 s late (8-30 s live, aicc2025/sip-to-ai PR #14) to pings every 2 s: a 4 s pong timeout closes 1011
    "late-pongs": Scenario("pongs 6 s late (8-30 s live) vs websockets' keepalive with a pong timeout (20 s / 20 s "
                           "scaled to 2 s / 4 s): the client closes 1011 keepalive ping timeout",
                           old(faults=("slow-pong:6@every",), live=OLD_KEEPALIVE),
                           real(("slow-pong:6@every",), live={"ping_interval_s": 2.0}), seconds=9.0),
    # answers 6 s long: turn 2 (8.9 s) starts while the answer to turn 1 still plays
    "barge-in": Scenario("answers 6 s long, the next turn starts during one: the ideal server lets answers overlap, "
                         "the real one interrupts (interrupted, turnComplete without generationComplete)",
                         old("ideal", emu={"reply_s": 6.0}), real(emu={"reply_s": 6.0}), seconds=11.0),
    # every answer 2-2.8 s late (7-15 s live, livekit/agents #5408), heard at 0.2 s; watchdog 1 s
    "latency-spike": Scenario("every answer 2-2.8 s late but heard at once: a watchdog that ignores the transcript "
                              "reconnects and re-sends; the real one waits longer",
                              old(emu={"spike_p": 1.0, "spike_s": (2.0, 2.8)}, watchdog_s=1.0, heard_timeout_s=1.0,
                                  reconnect=True),
                              real(emu={"spike_p": 1.0, "spike_s": (2.0, 2.8)}, watchdog_s=1.0, heard_timeout_s=12.0)),
    # connections live 12 s: goAway 3 s before the deadline, during the answer to turn 2, then close 1011
    "go-away-age": Scenario("connections live 12 s: goAway 3 s before (mid-answer), then close 1011 'Deadline "
                            "expired'", old(emu={"connection_s": 12.0, "go_away_lead_s": (3.0, 3.0)}),
                            real(emu={"connection_s": 12.0, "go_away_lead_s": (3.0, 3.0)}), seconds=16.0),
    # the five ways of not answering, on every connection (python-genai #2117, gemini-live-api-examples #48)
    "silent@every": Scenario("no-response:silent@every: nothing at all after ActivityEnd",
                             old(faults=("no-response:silent@every",)), real(("no-response:silent@every",)),
                             expect="gave up"),
    "heard@every": Scenario("no-response:heard@every: the turn's transcript, then nothing",
                            old(faults=("no-response:heard@every",)), real(("no-response:heard@every",)),
                            expect="gave up"),
    "empty@every": Scenario("no-response:empty@every: turnComplete with no content",
                            old(faults=("no-response:empty@every",)), real(("no-response:empty@every",)),
                            expect="gave up"),
    "late@every": Scenario("no-response:late@every: transcript, a 2.5 s gap, the transcript again, the answer; a "
                           "watchdog that ignores the transcript gives up on a server that would have answered",
                           old(faults=("no-response:late@every",), emu={"late_gap_s": 2.5}, reconnect=True,
                               watchdog_s=1.0, heard_timeout_s=1.0),
                           real(("no-response:late@every",), emu={"late_gap_s": 2.5})),
    "noise@every": Scenario("no-response:noise@every: an activity quieter than speech_dbfs is not answered (raised "
                            "to -3 dBFS here, so the candidate's voice counts as noise)",
                            old(faults=("no-response:noise@every",), emu={"speech_dbfs": -3.0}),
                            real(("no-response:noise@every",), emu={"speech_dbfs": -3.0}), expect="gave up"),
    # audio outside an activity closes 1007 (BasedHardware/omi #7611): the naive two-tasks writer sends it
    "strict-input": Scenario("audio after ActivityEnd on the real (strict) server: close 1007",
                             old(naive="two-tasks"),
                             real(), dtx=False),
}


@dataclass
class LabRun:
    scenario: str
    fixed: bool
    recording: Recording
    result: bridge.SessionResult
    emu_log: list[Any] = field(default_factory=list)
    violations: list[Any] = field(default_factory=list)

    @property
    def label(self) -> str:
        return "fixed" if self.fixed else "broken"

    @functools.cached_property
    def findings(self) -> list[Any]:
        """``diagnose`` of the recording alone (a 3 s response timeout, the lab's answers come within 1 s)."""
        from workbench.analysis.diagnose import diagnose

        return diagnose(self.recording, response_timeout_s=RESPONSE_TIMEOUT_S)


@dataclass
class Pair:
    """A scenario run both ways."""

    scenario: str
    broken: LabRun
    fixed: LabRun


def server_answers(log: Iterable[Any]) -> int:
    """Answers the emulator sent to user turns (interrupted ones included, empty ones not), walking its log."""
    pending: dict[int, list[str]] = {}
    n = 0
    for e in log:
        queue = pending.setdefault(e.conn, [])
        if e.direction == "in" and e.kind == "client_content":
            queue.append("greeting")
        elif e.direction == "in" and e.kind == "activity_end" and not (e.detail or "").startswith("0 bytes"):
            queue.append("user")
        elif e.direction == "out" and e.kind == "turn_complete" and queue:
            if queue.pop(0) == "user" and e.detail != "empty":
                n += 1
    return n


async def run_side(side: Side, samples: np.ndarray, out_dir: str | Path, *, name: str, dtx: bool = True
                   ) -> tuple[bridge.SessionResult, list[Any], list[Any]]:
    """One session on its own embedded emulator; the emulator's log goes beside the recording."""
    async with Emulator(side.emulator_config()) as emu:
        result = await bridge.run_session(samples, side.session_config(emu, name, dtx=dtx), out_dir)
        log, violations = list(emu.log), list(emu.violations)
    emu.write_log(out_dir)
    return result, log, violations


async def run(name: str, samples: np.ndarray, out_dir: str | Path, *, fixed: bool) -> LabRun:
    """One scenario, one way, on the first ``Scenario.seconds`` of ``samples`` (48 kHz int16)."""
    sc = SCENARIOS[name]
    result, log, violations = await run_side(sc.side(fixed), samples[: int(sc.seconds * MIC_RATE)], out_dir,
                                             name=f"lab-{name}", dtx=sc.dtx)
    return LabRun(name, fixed, load(out_dir), result, log, violations)


def _dir(root: Path, name: str, fixed: bool) -> Path:
    return root / f"{name.replace('@', '-')}-{'fixed' if fixed else 'broken'}"


async def _gated(jobs: list[tuple[str, bool]], samples: np.ndarray, root: Path, concurrency: int | None
                 ) -> list[LabRun]:
    gate = asyncio.Semaphore(concurrency or len(jobs) or 1)

    async def one(name: str, fixed: bool) -> LabRun:
        async with gate:
            return await run(name, samples, _dir(root, name, fixed), fixed=fixed)

    return list(await asyncio.gather(*(one(n, f) for n, f in jobs)))


async def run_all(names: list[str], samples: np.ndarray, root: str | Path, *, fixed: bool,
                  concurrency: int | None = None) -> dict[str, LabRun]:
    """Several scenarios one way, at once in this event loop (at most ``concurrency`` sessions at a time)."""
    runs = await _gated([(n, fixed) for n in names], samples, Path(root), concurrency)
    return dict(zip(names, runs, strict=True))


async def run_pairs(names: list[str], samples: np.ndarray, root: str | Path, *,
                    concurrency: int | None = None) -> dict[str, Pair]:
    """Every scenario broken and fixed, all at once (at most ``concurrency`` sessions at a time)."""
    jobs = [(n, f) for n in names for f in (False, True)]
    runs = await _gated(jobs, samples, Path(root), concurrency)
    by = {(r.scenario, r.fixed): r for r in runs}
    return {n: Pair(n, by[(n, False)], by[(n, True)]) for n in names}


def outcome(run: LabRun) -> str:
    """How the session ended, in a few words."""
    r = run.result
    if r.gave_up is not None:
        return f"gave up: {r.gave_up['reason']}"
    if r.error:
        return f"error: {r.error}"
    return f"{r.unanswered} unanswered" if r.unanswered else "all answered"


def summary_row(run: LabRun) -> dict[str, Any]:
    """Turns answered / duplicated / lost (the emulator's log), reconnects, the give-up, and the diagnose codes."""
    from workbench.analysis.tables import user_turns

    ut = user_turns(run.recording)
    found = run.findings
    return {
        "outcome": outcome(run),
        "user turns answered": f"{int(ut['answered'].sum()) if len(ut) else 0}/{len(ut)}",
        "answers sent by the server": server_answers(run.emu_log),
        "duplicated": sum(v.rule == "duplicate_turn" for v in run.violations),
        "lost": sum(v.rule == "lost_turn" for v in run.violations),
        "reconnects": run.result.reconnects,
        "gave_up": run.result.gave_up["reason"] if run.result.gave_up else "-",
        "findings": ", ".join(dict.fromkeys(f.code for f in found if f.severity != "info")) or "-",
        "notes": ", ".join(dict.fromkeys(f.code for f in found if f.severity == "info")) or "-",
    }


def summary(pairs: Mapping[str, Pair]) -> pd.DataFrame:
    """One row per scenario and side; ``as expected`` says whether a fixed run ended as its scenario says."""
    rows = {(n, r.label): {**summary_row(r), "as expected": outcome(r).startswith(SCENARIOS[n].expect) if r.fixed
                           else "-"} for n, p in pairs.items() for r in (p.broken, p.fixed)}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(["scenario", "run"])


def show(pair: Pair, *, findings: int = 8) -> None:
    """In a notebook: the scenario's heading, then each run's timeline (displayed where it is made) and diagnosis.

    ``plots.timeline`` builds a Figure outside pyplot, so ``plt.show()`` would display nothing: the
    figure is drawn to a PNG here and displayed, then cleared.  Drawn once: handing the figure to
    ``display`` would let the inline backend draw it twice (``bbox_inches="tight"`` measures with a
    full draw first), and the constrained layout leaves no margin to crop.
    """
    import io

    from IPython.display import Image, Markdown, display

    from workbench.analysis.diagnose import format_findings
    from workbench.ui.plots import timeline

    sc = SCENARIOS[pair.scenario]
    display(Markdown(f"### {pair.scenario}\n\n{sc.what}"))
    for run in (pair.broken, pair.fixed):
        side = sc.side(run.fixed)
        expected = f" (expected: {sc.expect})" if run.fixed else ""
        display(Markdown(f"**{run.label}** ({side.describe()}): {outcome(run)}{expected}"))
        fig = timeline(run.recording, title=f"{pair.scenario} ({run.label})")
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=FIGURE_DPI)
        fig.clf()
        display(Image(data=png.getvalue(), format="png"))
        print(format_findings(run.findings[:findings]))
