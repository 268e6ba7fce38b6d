"""The failure lab's scenarios are well formed (no sessions here: tests/test_notebooks.py runs them all in 04)."""

from __future__ import annotations

import pytest

from workbench.io import bridge, live
from workbench.ui import lab


@pytest.mark.parametrize("name", list(lab.SCENARIOS))
def test_every_side_builds_a_valid_emulator_and_bridge(name):
    sc = lab.SCENARIOS[name]
    for side in (sc.broken, sc.fixed):
        side.emulator_config()  # profile, faults and overrides validate
        cfg = bridge.SessionConfig(live=live.LiveSettings(**side.live), **side.bridge)
        assert cfg.recovery() is not None
    # the fixed run is the real bridge against the real profile: no naive piece, no pong timeout, recovery on
    assert sc.fixed.profile == "real" and sc.fixed.bridge.get("naive") is None
    assert sc.fixed.live.get("ping_timeout_s") is None and sc.fixed.bridge.get("reconnect", True)


def test_field_report_names_are_kept():
    assert {"receive-once", "frame-count", "two-tasks", "no-response", "stall", "close-1011", "go-away"} \
        <= set(lab.SCENARIOS)


def test_server_answers_counts_user_answers_from_the_emulator_log():
    from workbench.emulator.core import LogEntry

    log = [LogEntry(0.0, 1, "in", "client_content"), LogEntry(0.5, 1, "out", "turn_complete"),
           LogEntry(1.0, 1, "in", "activity_end", detail="3200 bytes"), LogEntry(1.5, 1, "out", "turn_complete"),
           LogEntry(2.0, 1, "in", "activity_end", detail="3200 bytes"),
           LogEntry(2.5, 1, "out", "turn_complete", detail="empty")]
    assert lab.server_answers(log) == 1  # the greeting and the empty answer do not count


# -- the scenarios as sessions: broken fails the way its heading says, fixed survives (the server's view) ------------

LIVE = ["late-pongs", "latency-spike", "heard@every", "empty@every", "strict-input"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, lab.Pair]:
    import asyncio

    import soundfile as sf

    from workbench.ui.cli import BUNDLED

    samples, _ = sf.read(BUNDLED, dtype="int16")
    return asyncio.run(lab.run_pairs(LIVE, samples, tmp_path_factory.mktemp("lab"), concurrency=10))


def _codes(run: lab.LabRun) -> set[str]:
    return {f.code for f in run.findings}


def _closes(run: lab.LabRun) -> list[int]:
    ws = run.recording.of_kind("ws")
    return [int(c) for c in ws[ws["what"] == "close"]["code"].dropna()]


@pytest.mark.slow
@pytest.mark.parametrize("name", LIVE)
def test_fixed_run_never_duplicates_or_loses_a_turn(pairs, name):
    fixed = pairs[name].fixed
    assert [v.rule for v in fixed.violations if v.rule in ("duplicate_turn", "lost_turn")] == []
    assert not [v for v in fixed.violations if v.rule.startswith("audio_")]
    assert fixed.recording.meta["live"]["ping_timeout_s"] is None
    assert lab.outcome(fixed).startswith(lab.SCENARIOS[name].expect)


@pytest.mark.slow
def test_late_pongs_close_the_old_keepalive_but_not_the_real_bridge(pairs):
    broken, fixed = pairs["late-pongs"].broken, pairs["late-pongs"].fixed
    assert 1011 in _closes(broken)
    pings = next(f for f in broken.findings if f.code == "unanswered_pings")
    assert "late pong" in (pings.cause or "")  # blamed on the keepalive setting, not on a stalled server
    assert 1011 not in _closes(fixed) and fixed.result.gave_up is None and fixed.result.unanswered == 0
    assert lab.server_answers(fixed.emu_log) >= 1


@pytest.mark.slow
def test_latency_spike_old_watchdog_reconnects_real_one_waits(pairs):
    broken, fixed = pairs["latency-spike"].broken, pairs["latency-spike"].fixed
    assert broken.result.reconnects >= 1
    cl = fixed.recording.of_kind("client")
    assert fixed.result.reconnects == 0 and (cl["action"] == "wait_longer").any()
    assert fixed.result.unanswered == 0


@pytest.mark.slow
def test_heard_never_answered_is_named_and_the_real_bridge_gives_up_bounded(pairs):
    broken, fixed = pairs["heard@every"].broken, pairs["heard@every"].fixed
    assert "heard_not_answered" in _codes(broken) and broken.result.reconnects == 0
    assert fixed.result.gave_up is not None and fixed.result.gave_up["reason"] in ("resend_limit", "reconnect_limit")
    assert {"heard_not_answered", "gave_up"} <= _codes(fixed)


@pytest.mark.slow
def test_empty_answer_counts_as_answered_by_the_client_but_not_by_the_server(pairs):
    broken, fixed = pairs["empty@every"].broken, pairs["empty@every"].fixed
    assert "empty_answer" in _codes(broken) and lab.server_answers(broken.emu_log) == 0
    assert fixed.result.gave_up is not None  # re-sent from a clean handle, bounded, then given up


@pytest.mark.slow
def test_strict_input_two_tasks_close_1007_one_writer_does_not(pairs):
    broken, fixed = pairs["strict-input"].broken, pairs["strict-input"].fixed
    assert 1007 in _closes(broken) and "audio_after_activity_end" in _codes(broken)
    assert 1007 not in _closes(fixed) and fixed.result.unanswered == 0
