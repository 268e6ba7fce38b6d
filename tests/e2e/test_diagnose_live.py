"""Diagnosis of real sessions: the bridge, the SDK over TLS and the emulator, then ``diagnose`` on the recording.

Short sessions (the bundled recording's first answer), run concurrently in one event loop by one
module fixture.  Each asserts what ``diagnose`` says of a behaviour the emulator produced, and that
a healthy session gives no false alarm.  Pings every 1 s; the keepalive timeout is per scenario.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
from conftest import SHORT_S, EmulatedRun, bundled_audio, emulated_session, run_concurrently

from workbench.analysis.diagnose import Finding, diagnose, format_findings
from workbench.core.params import TurnParams
from workbench.emulator import EmulatorConfig, parse_fault
from workbench.io import live

pytestmark = pytest.mark.slow
# Sessions sharing the event loop at once.  All ten at once on a loaded 2-core machine lag the loop past the silence
# window: turns split, and the faulted turn's answer is mistaken for another's (the same starvation as
# test_faults' reproductions).
AT_ONCE = 4


class Run(EmulatedRun):
    @functools.cached_property
    def findings(self) -> list[Finding]:
        return diagnose(self.rec)

    def code(self, code: str) -> Finding:
        found = [f for f in self.findings if f.code == code]
        assert found, (code, format_findings(self.findings))
        return found[0]

    def codes(self) -> set[str]:
        return {f.code for f in self.findings}

    def alarms(self) -> list[Finding]:
        return [f for f in self.findings if f.severity != "info"]


async def _one(out: Path, samples: Any, faults: tuple[str, ...] = (), emu: dict[str, Any] | None = None,
               ping_timeout_s: float | None = 20.0, model: str = live.DEFAULT_MODEL, silence_ms: float = 700.0,
               **session: Any) -> Run:
    run = await emulated_session(
        out, samples, EmulatorConfig(faults=[parse_fault(f) for f in faults], **(emu or {})),
        params=TurnParams(silence_ms=silence_ms), run_type=Run,
        live_kw=dict(model=model, ping_interval_s=1.0, ping_timeout_s=ping_timeout_s, close_timeout_s=1.0), **session)
    assert isinstance(run, Run)
    return run


SCENARIOS: dict[str, dict[str, Any]] = {
    # the forgiving server, as before issue 12: nothing to report
    "healthy-ideal": dict(emu=dict(profile="ideal")),
    # the real service's behaviours over the whole bundled interview (three turns), with the bridge's default
    # keepalive (no ping timeout: pongs come 8-30 s late): no false alarm
    "healthy-real": dict(ping_timeout_s=None, seconds=None),
    # pongs 6 s late against a 4 s ping timeout: the client's own keepalive closes 1011
    "late-pong": dict(faults=("slow-pong:6",), ping_timeout_s=4.0, reconnect=False),
    # the server closes 1011 while a (late) ping is in flight: no unanswered ping, the server's close
    "close-during-ping": dict(faults=("slow-pong:5", "close-1011:3"), ping_timeout_s=20.0, reconnect=False),
    # three of the five ways of not answering (the bridge recovers where it can); a long silence window keeps the
    # one spoken turn whole on a loaded machine (a split turn makes the next answer look like the faulted turn's)
    "silent": dict(faults=("no-response:silent:1",), ping_timeout_s=None, silence_ms=1500.0),
    "heard": dict(faults=("no-response:heard:1",), ping_timeout_s=None, silence_ms=1500.0),
    "empty": dict(faults=("no-response:empty:1",), ping_timeout_s=None, silence_ms=1500.0),
    # the server stops reading and sending for 6 s after the ActivityEnd; the watchdog (3 s) resumes while the server
    # has not yet read the old connection's close: the resume is rejected (1011) until the stall ends
    "stall": dict(faults=("stall:6",), ping_timeout_s=None, watchdog_s=3.0),
    # goAway by connection age (5 s here, ~10 min live), the bridge not resuming: then close 1011 "Deadline expired"
    "goaway-age": dict(emu=dict(connection_s=5.0, go_away_lead_s=(2.0, 2.0)), reconnect=False, ping_timeout_s=None),
    # strict input: an unknown model is closed 1008 at setup
    "unknown-model": dict(model="gemini-nope", ping_timeout_s=None),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    root = tmp_path_factory.mktemp("diag-live")

    def job(name: str) -> Any:
        kw = dict(SCENARIOS[name])
        return functools.partial(_one, root / name, bundled_audio(kw.pop("seconds", SHORT_S)), **kw)

    # the whole-interview session first, then the short ones as slots free up; at most AT_ONCE share the loop
    order = sorted(SCENARIOS, key=lambda name: "seconds" not in SCENARIOS[name])
    return run_concurrently({name: job(name) for name in order}, at_once=AT_ONCE)


@pytest.mark.parametrize("name", ["healthy-ideal", "healthy-real"])
def test_healthy_session_gives_no_false_alarm(runs, name):
    run = runs[name]
    assert run.result.error is None, run.result.error
    # loop lag depends on the shared machine's load (AT_ONCE sessions share one loop here), not on the session
    assert not [f for f in run.alarms() if f.code != "loop_lag"], run.findings
    assert all(f.severity == "warning" for f in run.alarms())


def test_healthy_real_session_notes_the_late_pongs(runs):
    run = runs["healthy-real"]
    notes = " ".join(f.evidence for f in run.findings)
    assert "no ping timeout (ping_timeout=None), so late pongs close nothing" in notes
    # three spoken turns (a loaded machine's late frames can split one in two)
    assert run.result.activities >= 3 and run.result.unanswered == 0 and run.result.reconnects == 0


def test_late_pong_is_blamed_on_the_keepalive_setting(runs):
    run = runs["late-pong"]
    cl = run.code("close")
    assert "1011" in cl.title and "keepalive" in cl.title
    assert cl.cause.startswith("client-side keepalive failure: late pong")
    assert "stalled" not in cl.cause.replace("not stalled", "")
    assert "late pong" in run.code("unanswered_pings").cause
    # the server's side: it received the ping, and its pong was not due before the client gave up
    log = run.rec.path.joinpath("emulator.jsonl").read_text()
    assert '"direction": "in", "kind": "ping"' in log


def test_server_close_during_a_ping_is_no_unanswered_ping(runs):
    run = runs["close-during-ping"]
    assert "unanswered_pings" not in run.codes(), run.findings
    cl = run.code("close")
    assert cl.cause.startswith("server internal error (1011 sent by the server)")
    assert "still in flight: it was not unanswered" in cl.cause
    closes = run.rec.of_kind("ws")
    assert set(closes[closes["what"] == "close"]["closed_by"]) == {"server"}
    assert run.code("gave_up").title == "the bridge gave up: reconnect_off"


def test_silent_turn_is_never_heard(runs):
    f = runs["silent"].code("no_response_after_activity_end")
    assert "never heard" in f.evidence and "Failure A" in f.cause
    assert "heard_not_answered" not in runs["silent"].codes()


def test_heard_turn_is_told_from_a_silent_one(runs):
    run = runs["heard"]
    f = run.code("heard_not_answered")
    assert "inputTranscription" in f.evidence
    assert "no_response_after_activity_end" not in run.codes()
    assert "duplicate_turn" not in run.codes()  # the resumed snapshot predates the turn: the re-send is needed
    log = run.rec.path.joinpath("emulator.jsonl").read_text()
    assert "no-response:heard" in log and '"direction": "violation", "kind": "duplicate_turn"' not in log


def test_empty_answer_is_named(runs):
    run = runs["empty"]
    f = run.code("empty_answer")
    assert f.severity in ("error", "warning") and "#2117" in f.cause


def test_go_away_by_age_then_deadline_close(runs):
    run = runs["goaway-age"]
    ga = run.code("go_away")
    assert ga.severity == "warning" and "no reconnect" in ga.title
    cl = run.code("close")
    assert "Deadline expired" in cl.title and "goAway by age" in cl.cause and "after the server's goAway" in cl.cause
    assert run.code("no_activity_end").severity == "warning"  # the turn open at the close is the close's doing


def test_unknown_model_is_named(runs):
    run = runs["unknown-model"]
    cl = run.code("close")
    assert "1008" in cl.title and "check the model name" in cl.cause
    assert run.code("gave_up").title == "the bridge gave up: connect_failed"


def test_stall_then_resume_rejected_while_the_old_connection_looked_open(runs):
    run = runs["stall"]
    rr = run.code("resume_rejected")
    assert rr.severity == "warning" and "the emulator rejected the resume" in rr.evidence
    nr = run.code("no_response_after_activity_end")
    assert "recovered by a re-send" in nr.title and "the server stalled" in nr.cause
    closes = run.rec.of_kind("ws")
    rejected = closes[(closes["what"] == "close") & (closes["code"] == 1011)]
    assert len(rejected) and set(rejected["closed_by"]) == {"server"}
    assert run.result.error is None and run.result.unanswered == 0
