"""The failure lab: every emulator fault and naive-bridge mode reproduced, survived and diagnosed.

Sessions are real (aiortc on loopback, the google-genai SDK over TLS, the emulator) and short:
pings every 1 s with a 2 s timeout, short stalls, the first answer of the bundled recording for
the reproductions.  They run concurrently in one event loop, in two module fixtures.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SHORT_S, EmulatedRun, bundled_audio, emulated_session, run_concurrently

from workbench.analysis.diagnose import Finding, diagnose
from workbench.core.params import TurnParams
from workbench.emulator import EmulatorConfig, parse_fault
from workbench.io.naive import FrameCountDetector, check_mode

pytestmark = pytest.mark.slow


class Run(EmulatedRun):
    def findings(self, **kw: Any) -> list[Finding]:
        return diagnose(self.rec, **kw)

    def codes(self, **kw: Any) -> dict[str, Finding]:
        return {f.code: f for f in reversed(self.findings(**kw))}


async def one(out: Path, samples: np.ndarray, faults: tuple[str, ...] = (), *, naive: str | None = None,
              reconnect: bool = True, watchdog_s: float | None = 3.0, max_queue: int = 16, dtx: bool = True,
              response_timeout_s: float = 4.0, profile: str = "real", silence_ms: float = 700.0) -> Run:
    """One session.  Reproductions run the ideal server with pings every 1 s and a 2 s pong timeout (each
    failure alone, as the field report saw it); survival runs the real profile with the bridge's own keepalive
    (pongs 8-30 s late, never waited for), pinging every 1 s so late pongs happen in a short session."""
    run = await emulated_session(
        out, samples, EmulatorConfig(profile=profile, faults=[parse_fault(f) for f in faults]),
        live_kw=dict(ping_interval_s=1.0, ping_timeout_s=2.0 if profile == "ideal" else None, max_queue=max_queue,
                     close_timeout_s=1.0),
        params=TurnParams(silence_ms=silence_ms), run_type=Run, dtx=dtx, naive=naive, reconnect=reconnect,
        watchdog_s=watchdog_s, response_timeout_s=response_timeout_s)
    assert isinstance(run, Run)
    return run


# -- sans-I/O pieces --------------------------------------------------------------------------------------------

def test_frame_count_detector_never_ends_a_turn_when_frames_stop():
    det = FrameCountDetector(TurnParams())
    loud = (np.sin(np.arange(320) / 3) * 8000).astype(np.int16)
    out = [d for i in range(20) for d in det.frame(i * 0.02, loud)]
    assert [d.kind for d in out] == ["speech_start"] and out[0].pre_roll.size > 0
    assert det.tick(100.0) == [] and det.finish(100.0) == []  # the clock does not count
    quiet = np.zeros(320, np.int16)
    ends = [d for i in range(40) for d in det.frame(0.4 + i * 0.02, quiet)]
    assert [d.kind for d in ends] == ["speech_end"]  # only counted silent frames end it
    with pytest.raises(ValueError, match="unknown naive mode"):
        check_mode("receive-twice")


# -- reproductions: the naive bridge, or the real one with its resilience off -----------------------------------

REPRO = {
    "no-response": dict(faults=("no-response",), reconnect=False, watchdog_s=None, response_timeout_s=3.0),
    "stall": dict(faults=("stall:6",), reconnect=False, watchdog_s=None),
    "close-1011": dict(faults=("close-1011:4",), reconnect=False),
    "close-1011-mid": dict(faults=("close-1011:mid-turn",), reconnect=False),
    "go-away": dict(faults=("go-away:1",), reconnect=False),
    "slow": dict(faults=("slow:3",), watchdog_s=None),
    "flood": dict(faults=("flood:100",)),
    "receive-once": dict(naive="receive-once", reconnect=False, watchdog_s=None, max_queue=4),
    "frame-count": dict(naive="frame-count", reconnect=False, watchdog_s=None),
    # frames keep coming in silence (no DTX), so audio is still queued when ActivityEnd goes out
    "two-tasks": dict(naive="two-tasks", reconnect=False, watchdog_s=None, dtx=False),
}


# Reproductions at most this many at a time, with a 1.5 s silence window (no reproduction is about the window; the
# first answer still ends at 7.0 s of the 8.5 s played).  All ten at once with 700 ms starved the one event loop on
# a loaded 2-core machine (lag up to 1.4 s, half the mic frames dropped, media time stretched to twice the audio):
# the clock ended turns between late frames (one spoken answer became up to 11 activities), so the tests that count
# the unanswered turn, judge the late answer or need the turn still open (no-response, slow, receive-once,
# frame-count) failed; 4 at once with 700 ms still split receive-once in three at load 13.
REPRO_AT_ONCE = 3
REPRO_SILENCE_MS = 1500.0


@pytest.fixture(scope="module")
def repro(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    root = tmp_path_factory.mktemp("repro")
    short = bundled_audio(SHORT_S)
    return run_concurrently({name: functools.partial(one, root / name, short, profile="ideal",
                                                     silence_ms=REPRO_SILENCE_MS, **kw)
                             for name, kw in REPRO.items()}, at_once=REPRO_AT_ONCE)


def ws(run: Run, what: str) -> Any:
    df = run.rec.of_kind("ws")
    return df[df["what"] == what]


def test_no_response_reproduced_and_diagnosed(repro):
    run = repro["no-response"]
    assert run.result.unanswered == 1
    assert any(e.kind == "fault" and "no-response" in (e.detail or "") for e in run.emu_log)
    f = run.codes(response_timeout_s=2.0)["no_response_after_activity_end"]
    assert f.severity == "error" and "server sent no response" in f.cause


def test_stall_reproduced_as_client_keepalive_1011_and_diagnosed(repro):
    run = repro["stall"]
    closes = ws(run, "close")
    assert 1011 in set(closes["code"]) and closes["reason"].str.contains("keepalive").any()
    assert run.result.error is not None
    f = run.codes()["close"]
    assert "server stalled" in f.cause


@pytest.mark.parametrize("name", ["close-1011", "close-1011-mid"])
def test_server_1011_reproduced_and_diagnosed(repro, name):
    run = repro[name]
    closes = ws(run, "close")
    assert (closes["code"] == 1011).any() and closes["detail"].str.contains("from server").any()
    assert run.result.error is not None
    assert "server internal error" in run.codes()["close"].cause


def test_go_away_reproduced_and_diagnosed(repro):
    run = repro["go-away"]
    assert "go_away" in set(run.rec.of_kind("server")["msg"])
    f = run.codes()["go_away"]
    assert f.severity == "warning" and "no reconnect" in f.title


def test_slow_reproduced_and_diagnosed(repro):
    run = repro["slow"]
    assert run.result.unanswered == 0 and run.result.error is None
    f = run.codes(response_timeout_s=2.0)["no_response_after_activity_end"]
    assert "late" in f.title and f.cause == "slow model response"


def test_flood_survived_and_diagnosed(repro):
    run = repro["flood"]
    assert run.result.unanswered == 0 and run.result.error is None
    n = (run.rec.of_kind("server")["text"] == ".").sum()
    assert n > 100
    assert "server_flood" in run.codes()


def test_receive_once_reproduces_the_real_1011_keepalive_timeout(repro):
    run = repro["receive-once"]
    closes = ws(run, "close")
    assert (closes["code"] == 1011).any() and closes["reason"].str.contains("keepalive ping timeout").any()
    assert run.result.unanswered == 1  # the answer to the user's turn was never read
    f = run.codes()["close"]
    assert "receive loop stopped" in f.cause
    assert "receive_loop_idle" in run.codes()


def test_frame_count_under_dtx_reproduces_failure_b(repro):
    run = repro["frame-count"]
    sends = run.rec.of_kind("send")
    assert (sends["msg"] == "activity_start").any() and not (sends["msg"] == "activity_end").any()
    f = run.codes()["no_activity_end"]
    assert "Failure B" in f.cause


def test_two_tasks_reproduces_audio_after_activity_end(repro):
    run = repro["two-tasks"]
    assert "audio_after_activity_end" in {v.rule for v in run.violations}
    f = run.codes()["audio_after_activity_end"]
    assert "two tasks" in f.cause


# -- survival: the real bridge finishes every turn of the demo recording ----------------------------------------

SURVIVE = {
    "no-response": ("no-response",),
    "stall": ("stall:6",),
    "close-1011": ("close-1011:12",),
    "close-1011-mid": ("close-1011:mid-turn",),
    "go-away": ("go-away:1",),
}


@pytest.fixture(scope="module")
def survived(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    root = tmp_path_factory.mktemp("survive")
    full = bundled_audio()
    return run_concurrently({name: functools.partial(one, root / name, full, f) for name, f in SURVIVE.items()})


@pytest.mark.parametrize("name", list(SURVIVE))
def test_real_bridge_survives_and_loses_no_turn(survived, name):
    run = survived[name]
    assert run.result.error is None, run.result.error
    assert run.result.activities >= 3 and run.result.unanswered == 0  # 3 unless a loaded machine splits a turn
    assert run.result.reconnects >= 1
    connects = ws(run, "connect")
    assert len(connects) == run.result.reconnects + 1
    # the emulator answered all three user turns, the last connection included
    conv_turns = [e for e in run.emu_log if e.kind == "resumed"]
    assert conv_turns, "the new connection resumed with a handle"
    ends = [e for e in run.emu_log if e.direction == "in" and e.kind == "activity_end"]
    assert len(ends) >= 3
    codes = run.codes()
    assert codes.get("reconnects") is None or "no user turn lost" in codes["reconnects"].title
    # the fault's own evidence (close, unanswered pings, writer errors) stays; no turn may look lost or unanswered
    lost = {"no_activity_end", "no_response_after_activity_end", "reconnects", "frames_stopped_in_turn"}
    assert not [f for f in run.findings() if f.severity == "error" and f.code in lost], run.findings()
