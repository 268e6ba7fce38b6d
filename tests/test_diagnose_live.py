"""Diagnosis of real sessions: the bridge, the SDK over TLS and the emulator, then ``diagnose`` on the recording.

Short sessions (the bundled recording's first answer), run concurrently in one event loop by one
module fixture.  Each asserts what ``diagnose`` says of a behaviour the emulator produced, and that
a healthy session gives no false alarm.  Pings every 1 s; the keepalive timeout is per scenario.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf

import workbench
from workbench import bridge, live
from workbench.cli import BUNDLED
from workbench.diagnose import Finding, diagnose
from workbench.emulator import Emulator, EmulatorConfig, parse_fault
from workbench.recording import Recording
from workbench.turns import TurnParams

pytestmark = pytest.mark.slow
SHORT_S = 8.5  # the first answer (0.5-5.5 s) and the silence after it


def _supported(*faults: str, **cfg: Any) -> bool:
    """Whether this emulator knows the faults and config fields (they land with issue 12's emulator work)."""
    try:
        for f in faults:
            parse_fault(f)
        EmulatorConfig(**cfg)
    except (TypeError, ValueError):
        return False
    return True


@dataclass
class Run:
    result: bridge.SessionResult
    rec: Recording
    findings: list[Finding]

    def code(self, code: str) -> Finding:
        found = [f for f in self.findings if f.code == code]
        assert len(found) == 1, (code, self.findings)
        return found[0]

    def codes(self) -> set[str]:
        return {f.code for f in self.findings}

    def alarms(self) -> list[Finding]:
        return [f for f in self.findings if f.severity != "info"]


async def _one(out: Path, samples: Any, faults: tuple[str, ...] = (), emu: dict[str, Any] | None = None,
               ping_timeout_s: float | None = 20.0, **session: Any) -> Run:
    cfg_emu = EmulatorConfig(faults=[parse_fault(f) for f in faults], **(emu or {}))
    async with Emulator(cfg_emu) as server:
        settings = live.LiveSettings(base_url=server.base_url, ssl_context=server.client_ssl_context(),
                                     ping_interval_s=1.0, ping_timeout_s=ping_timeout_s, close_timeout_s=1.0)
        cfg = bridge.SessionConfig(params=TurnParams(), live=settings, dtx=True, name=out.name, **session)
        result = await bridge.run_session(samples, cfg, out)
    server.write_log(out)
    rec = workbench.load(out)
    return Run(result, rec, diagnose(rec))


SCENARIOS: dict[str, dict[str, Any]] = {
    # the forgiving server, as today: nothing to report
    "healthy-ideal": dict(emu=dict(profile="ideal")) if _supported(profile="ideal") else {},
    # the real service's behaviours with the bridge's keepalive off (ping_timeout=None): no false alarm
    "healthy-real": dict(emu=dict(profile="real"), ping_timeout_s=None),
    # pongs 3 s late against a 2 s ping timeout: the client's own keepalive closes 1011
    "late-pong": dict(faults=("slow-pong:3",), ping_timeout_s=2.0, reconnect=False, watchdog_s=None),
    # the server closes 1011 while a (late) ping is in flight: no unanswered ping, the server's close
    "close-during-ping": dict(faults=("slow-pong:5", "close-1011:3"), ping_timeout_s=20.0, reconnect=False),
}
RUNNABLE = {
    "healthy-ideal": True,
    "healthy-real": _supported(profile="real"),
    "late-pong": _supported("slow-pong:3"),
    "close-during-ping": _supported("slow-pong:5", "close-1011:3"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    root = tmp_path_factory.mktemp("diag-live")
    x, rate = sf.read(BUNDLED, dtype="int16")
    samples = x[: int(SHORT_S * rate)]

    async def go(name: str) -> tuple[str, Run]:
        return name, await _one(root / name, samples, **SCENARIOS[name])

    async def all_of() -> dict[str, Run]:
        return dict(await asyncio.gather(*(go(n) for n, ok in RUNNABLE.items() if ok)))

    return asyncio.run(all_of())


def _need(runs: dict[str, Run], name: str) -> Run:
    if name not in runs:
        pytest.skip(f"this emulator cannot run {name!r} yet")
    return runs[name]


@pytest.mark.parametrize("name", ["healthy-ideal", "healthy-real"])
def test_healthy_session_gives_no_false_alarm(runs, name):
    run = _need(runs, name)
    assert run.result.error is None, run.result.error
    assert not run.alarms(), run.findings
    assert [f.code for f in run.findings] == ["healthy"]


def test_late_pong_is_blamed_on_the_keepalive_setting(runs):
    run = _need(runs, "late-pong")
    cl = run.code("close")
    assert "1011" in cl.title and "keepalive" in cl.title
    assert "late pong" in cl.cause and "stalled" not in cl.cause.replace("not stalled", "")
    # the emulator did answer the pings: its log says how late
    pongs = run.rec.path.joinpath("emulator.jsonl").read_text().count('"kind": "pong"')
    assert pongs >= 1


def test_server_close_during_a_ping_is_no_unanswered_ping(runs):
    run = _need(runs, "close-during-ping")
    assert "unanswered_pings" not in run.codes(), run.findings
    cl = run.code("close")
    assert cl.cause.startswith("server internal error (1011 sent by the server)")
    closes = run.rec.of_kind("ws")
    closes = closes[closes["what"] == "close"]
    assert (closes["closed_by"] == "server").all()
