"""The failure lab: each field-report failure as a named scenario, run broken and then fixed.

A scenario is emulator faults plus a naive-bridge mode.  ``broken`` runs it with the naive piece
in place and the bridge's resilience off (that is the failure, reproduced); ``fixed`` runs the same
faults through the real bridge (persistent receive loop, clock-measured silence, one writer,
watchdog, reconnect with the resumption handle) against the emulator's real profile.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import bridge, live
from .emulator import Emulator, EmulatorConfig, parse_fault
from .recording import Recording, load
from .turns import TurnParams


@dataclass(frozen=True)
class Scenario:
    what: str
    faults: tuple[str, ...] = ()
    naive: str | None = None
    dtx: bool = True
    max_queue: int = 16


SCENARIOS = {
    "receive-once": Scenario("receive loop stops after the greeting: 1011 keepalive ping timeout",
                             naive="receive-once", max_queue=4),
    "frame-count": Scenario("silence counted in frames, frames stop under DTX: no ActivityEnd (Failure B)",
                            naive="frame-count"),
    "two-tasks": Scenario("audio and signals from two tasks: audio after ActivityEnd", naive="two-tasks", dtx=False),
    "no-response": Scenario("the server ignores ActivityEnd (Failure A)", faults=("no-response:1",)),
    "stall": Scenario("the server stalls: no pongs, client 1011", faults=("stall:5",)),
    "close-1011": Scenario("the server closes 1011 in the middle of an answer", faults=("close-1011:mid-turn",)),
    "go-away": Scenario("goAway, then the connection ends", faults=("go-away:1",)),
}


@dataclass
class LabRun:
    scenario: str
    fixed: bool
    recording: Recording
    result: bridge.SessionResult


async def run(name: str, samples: np.ndarray, out_dir: str | Path, *, fixed: bool) -> LabRun:
    """One scenario on the embedded emulator.

    ``broken`` runs the ideal server (each failure alone, as the field report saw it) with pings every
    1 s and a 2 s pong timeout; ``fixed`` runs the real profile (late pongs, barge-in, snapshot
    handles, strict input) with the bridge's own keepalive: pings every 1 s, no pong timeout.
    """
    sc = SCENARIOS[name]
    config = EmulatorConfig(profile="real" if fixed else "ideal", faults=[parse_fault(f) for f in sc.faults])
    async with Emulator(config) as emu:
        settings = live.LiveSettings(base_url=emu.base_url, ssl_context=emu.client_ssl_context(),
                                     ping_interval_s=1.0, ping_timeout_s=None if fixed else 2.0, close_timeout_s=1.0,
                                     max_queue=16 if fixed else sc.max_queue)
        cfg = bridge.SessionConfig(params=TurnParams(), live=settings, dtx=sc.dtx, name=f"lab-{name}",
                                   naive=None if fixed else sc.naive, reconnect=fixed,
                                   watchdog_s=3.0 if fixed else None, response_timeout_s=4.0)
        result = await bridge.run_session(samples, cfg, out_dir)
    emu.write_log(out_dir)
    return LabRun(name, fixed, load(out_dir), result)


async def run_all(names: list[str], samples: np.ndarray, root: str | Path, *, fixed: bool) -> dict[str, LabRun]:
    """Several scenarios at once in this event loop (they only wait on sockets and the clock)."""
    root = Path(root)
    tag = "fixed" if fixed else "broken"
    runs = await asyncio.gather(*(run(n, samples, root / f"{n}-{tag}", fixed=fixed) for n in names))
    return dict(zip(names, runs, strict=True))
