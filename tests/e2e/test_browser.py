"""A real browser through ``workbench serve``: headless Chromium's fake microphone plays the candidate's
first two answers into the page, which connects to the bridge over WebRTC against the embedded emulator.

Two browsers run at once, each muting its track in the middle of the first answer (3.0 s to 4.5 s of
microphone time): one with ``track.enabled = false`` (silent frames keep coming), one with
``replaceTrack(null)`` and Opus DTX (no packets at all, Failure B's settings).  Either way the first
answer must split into two turns, and every turn must be sent in order and answered.  Skips when no
Chromium is installed (``make system`` installs Debian's ``chromium``).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import soundfile as sf
from conftest import REPO, chromium, end_group

import workbench
from workbench.analysis.tables import turn_table
from workbench.ui.serve import start_in_background

pytestmark = pytest.mark.slow

CANDIDATE = REPO / "recordings" / "candidate.flac"
TWO_ANSWERS_S = 16.5  # candidate.labels.txt: answer 1 0.5-5.5 s, answer 2 9.0-14.7 s
MUTE = {"mute_at": 3.0, "unmute_at": 4.5, "stop_after": TWO_ANSWERS_S + 1.0}
RUNS = {"enabled": {"mute_mode": "enabled", "dtx": 0}, "enabled_dtx": {"mute_mode": "enabled", "dtx": 1},
        "replace": {"mute_mode": "replace", "dtx": 0}}
# Chrome does not advance RTP timestamps over a replaceTrack(null) gap: after unmuting, media time lags
# the clock by the mute's length.  The pipeline re-anchors media time (pipeline.REANCHOR_*); the "replace"
# run checks turns still come out whole.
DEADLINE_S = 60.0


def _launch(binary: str, url: str, wav: Path, profile: Path) -> subprocess.Popen[bytes]:
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}%noloop", "--autoplay-policy=no-user-gesture-required",
        # Host candidates on 127.0.0.1 in the clear: a machine may have only lo, and aiortc cannot resolve mDNS.
        "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
    ]
    return subprocess.Popen([binary, *flags, url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


@pytest.fixture(scope="module")
def browser_sessions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    binary = chromium()
    if binary is None:
        pytest.skip("no Chromium found (apt-get install -y chromium, or set WORKBENCH_CHROMIUM)")
    root = tmp_path_factory.mktemp("browser")
    audio, rate = sf.read(CANDIDATE, dtype="int16")
    assert rate == 48_000
    wav = root / "two_answers.wav"
    sf.write(wav, audio[: int(TWO_ANSWERS_S * rate)], rate, subtype="PCM_16")
    handle = start_in_background(0, out_dir=root / "recordings")
    procs = {}
    try:
        for name, options in RUNS.items():
            query = "&".join(f"{k}={v}" for k, v in {"autostart": 1, **MUTE, **options}.items())
            procs[name] = _launch(binary, f"{handle.url}?{query}", wav, root / f"profile-{name}")
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            sessions = handle.status()["sessions"]
            if len(sessions) == len(RUNS) and all(s["state"] == "ended" for s in sessions):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"browser sessions did not end within {DEADLINE_S:.0f} s: {json.dumps(handle.status())}")
    finally:
        for proc in procs.values():
            end_group(proc, 5)
        handle.stop()
    return {s["options"]["mute_mode"] + ("_dtx" if s["options"]["dtx"] else ""): s for s in sessions}


@pytest.mark.parametrize("run", ["enabled", "enabled_dtx", "replace"])
def test_turns_detected_sent_in_order_and_answered(browser_sessions: dict[str, dict], run: str) -> None:
    s = browser_sessions[run]
    assert s["error"] is None
    rec = workbench.load(s["dir"])
    tt = turn_table(rec)
    # answer 1, split by the mute, then answer 2
    assert len(tt) == 3, tt
    assert tt["answered"].all(), tt
    assert (tt["activity_end"] < tt["first_audio"]).all() and (tt["first_audio"] < tt["turn_complete"]).all()
    mic_open = float(rec.of_kind("session").query("what == 'mic_open'")["t"].iloc[0])
    first_end = tt["activity_end"].iloc[0] - mic_open
    assert MUTE["mute_at"] < first_end < MUTE["unmute_at"], "the first turn should end during the mute"
    # what the emulator received: per activity, start, audio..., end, and nothing outside
    received = [json.loads(line) for line in (Path(s["dir"]) / "emulator.jsonl").read_text().splitlines()]
    assert not [r for r in received if r["direction"] == "violation"]
    kinds = [r["kind"] for r in received if r["direction"] == "in"
             and r["kind"] in ("audio", "activity_start", "activity_end")]
    opened, audio_in = False, 0
    for k in kinds:
        if k == "activity_start":
            assert not opened
            opened, audio_in = True, 0
        elif k == "activity_end":
            assert opened and audio_in > 0
            opened = False
        else:
            assert opened, "audio outside an activity reached the server"
            audio_in += 1
    assert kinds.count("activity_end") == 3


def test_mute_modes_reach_the_bridge_as_the_field_sees_them(browser_sessions: dict[str, dict]) -> None:
    for run in RUNS:
        s = browser_sessions[run]
        assert [p["page"] for p in s["page"]] == ["mute", "unmute"]
        rec = workbench.load(s["dir"])
        gaps = rec.of_kind("frame_gap")
        longest = float(gaps["gap_s"].max()) if len(gaps) else 0.0
        if run == "enabled":  # silent frames at full rate: no gap as long as the mute
            assert longest < 0.5
        elif run == "enabled_dtx":  # DTX: about one packet per 400 ms in silence
            assert 0.3 < longest < 1.0
        else:  # replaceTrack(null): no packets at all while muted
            assert longest > 1.0


def test_the_agent_is_heard_in_the_browser(browser_sessions: dict[str, dict]) -> None:
    for s in browser_sessions.values():
        stats = s["browser_stats"]
        assert stats["packets_sent"] > 0 and stats["packets_received"] > 0
        assert stats["audio_energy_in"] > 0, "the model's audio never reached the page"


def test_browser_recordings_plot_and_diagnose_like_any_other(browser_sessions: dict[str, dict], tmp_path: Path) -> None:
    from workbench.analysis.diagnose import diagnose
    from workbench.ui.plots import save_timeline

    for run, s in browser_sessions.items():
        rec = workbench.load(s["dir"])
        png = save_timeline(rec, tmp_path / f"{run}.png")
        assert png.stat().st_size > 10_000
        findings = diagnose(rec)
        assert not [f for f in findings if f.severity == "error"], [f.title for f in findings]
