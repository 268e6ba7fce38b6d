"""The failure lab's scenarios are well formed (no sessions here: tests/test_notebooks.py runs them all in 04)."""

from __future__ import annotations

import pytest

from workbench import bridge, lab, live


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
