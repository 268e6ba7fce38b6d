"""The CLI as a user runs it: a separate emulator process, trust via SSL_CERT_FILE, a short file, live skip."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

import workbench
from workbench.analysis.tables import turn_table
from workbench.ui.cli import BUNDLED


def short_wav(tmp_path, seconds=7.0, stereo=True, rate=44_100):
    """The first answer of the bundled track, resampled and made stereo: any rate, any channels."""
    import soxr

    x, r = sf.read(BUNDLED, dtype="float32")
    x = soxr.resample(x[: int(seconds * r)], r, rate)
    data = np.stack([x, x], axis=1) if stereo else x
    path = tmp_path / "answer.wav"
    sf.write(path, data, rate)
    return path


@pytest.mark.slow
def test_run_against_a_separate_emulator_with_ssl_cert_file(tmp_path):
    cert = tmp_path / "emu.pem"
    emu = subprocess.Popen([sys.executable, "-m", "workbench.ui.cli", "emulator", "--port", "0",
                            "--cert-out", str(cert)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = emu.stdout.readline()
        url = re.search(r"(https://127\.0\.0\.1:\d+)", line).group(1)
        env = {**os.environ, "SSL_CERT_FILE": str(cert)}
        out = tmp_path / "rec"
        p = subprocess.run([sys.executable, "-m", "workbench.ui.cli", "run", "--audio", str(short_wav(tmp_path)),
                            "--base-url", url, "--out", str(out), "--silence-ms", "600", "--quiet"],
                           capture_output=True, text=True, timeout=90, env=env)
        assert p.returncode == 0, p.stderr
        assert "ActivityEnd sent" in p.stdout
    finally:
        emu.terminate()
        emu.wait(10)
    rec = workbench.load(out)
    assert rec.meta["params"]["silence_ms"] == 600 and rec.meta["live"]["endpoint"] == url
    assert rec.meta["event_loop"] == "uvloop"  # the commands run on uvloop (workbench.io.eventloop)
    tt = turn_table(rec)
    assert len(tt) == 1 and tt["answered"].all()


def test_live_without_key_is_a_clear_error(tmp_path, monkeypatch):
    env = {k: v for k, v in os.environ.items() if k != "GEMINI_API_KEY"}
    p = subprocess.run([sys.executable, "-m", "workbench.ui.cli", "run", "--audio", str(short_wav(tmp_path, 1.0)),
                        "--live", "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 2 and "GEMINI_API_KEY" in p.stderr and "Traceback" not in p.stderr


def test_bad_event_loop_choice_is_one_line(tmp_path):
    env = {**os.environ, "WORKBENCH_LOOP": "tokio"}
    p = subprocess.run([sys.executable, "-m", "workbench.ui.cli", "run", "--audio", str(short_wav(tmp_path, 1.0)),
                        "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 2 and "WORKBENCH_LOOP" in p.stderr and "Traceback" not in p.stderr


def test_emulator_bad_fault_is_one_line():
    p = subprocess.run([sys.executable, "-m", "workbench.ui.cli", "emulator", "--fault", "melt"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "unknown fault" in p.stderr and len(p.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(not os.environ.get("GEMINI_API_KEY"), reason="needs GEMINI_API_KEY (real Gemini Live)")
def test_live_gemini_session(tmp_path):
    out = tmp_path / "live"
    p = subprocess.run([sys.executable, "-m", "workbench.ui.cli", "run", "--audio", str(short_wav(tmp_path)),
                        "--live", "--out", str(out), "--quiet"], capture_output=True, text=True, timeout=180)
    rec = workbench.load(out)
    assert rec.of_kind("send").query("msg == 'activity_end' and stage == 'wire'").shape[0] >= 1, p.stderr
    assert (rec.of_kind("server")["msg"] == "turn_complete").any()
