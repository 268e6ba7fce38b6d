"""Bad input gets one clear line naming the problem, never a traceback."""

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from workbench.store.audiofile import AudioInputError, load_mono


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "workbench.ui.cli", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


@pytest.fixture
def bad_files(tmp_path):
    files = {}
    files["missing"] = tmp_path / "nope.wav"
    (tmp_path / "empty.wav").write_bytes(b"")
    files["empty"] = tmp_path / "empty.wav"
    (tmp_path / "notes.wav").write_text("this is not audio\n" * 50)
    files["text"] = tmp_path / "notes.wav"
    files["dir"] = tmp_path
    sf.write(tmp_path / "zero.wav", np.zeros((0, 1), np.float32), 16000)
    files["no_samples"] = tmp_path / "zero.wav"
    return files


@pytest.mark.parametrize("which,needle", [
    ("missing", "no such file"), ("empty", "empty file"), ("text", "not readable as audio"),
    ("dir", "is a directory"), ("no_samples", "no audio samples"),
])
def test_load_mono_errors(bad_files, which, needle):
    with pytest.raises(AudioInputError, match=needle):
        load_mono(bad_files[which], 48_000)


@pytest.mark.parametrize("which,needle", [("missing", "no such file"), ("text", "not readable as audio")])
def test_cli_run_bad_audio_is_one_line(bad_files, tmp_path, which, needle):
    p = run_cli("run", "--audio", str(bad_files[which]), "--out", str(tmp_path / "rec"))
    assert p.returncode == 2
    assert p.stderr.strip().startswith("workbench: error:") and needle in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_stereo_and_any_rate_are_accepted(tmp_path):
    t = np.arange(22050) / 22050
    stereo = np.stack([np.sin(2 * np.pi * 300 * t), np.sin(2 * np.pi * 300 * t)], axis=1) * 0.3
    sf.write(tmp_path / "s.wav", stereo, 22050)
    mono = load_mono(tmp_path / "s.wav", 48_000)
    assert mono.ndim == 1 and abs(mono.size - 48_000) < 10


@pytest.mark.parametrize("flag,value,needle", [
    ("--silence-ms", "-5", "silence_ms"), ("--threshold-db", "12", "start_db"),
])
def test_cli_bad_parameter_is_one_line(tmp_path, flag, value, needle):
    sf.write(tmp_path / "a.wav", np.zeros(16000, np.float32), 16000)
    p = run_cli("vad", str(tmp_path / "a.wav"), flag, value)
    assert p.returncode == 2, p.stderr
    assert needle in p.stderr and "Traceback" not in p.stderr


def test_help_lists_commands():
    p = run_cli("--help")
    assert p.returncode == 0
    for cmd in ("demo", "run", "emulator", "vad"):
        assert cmd in p.stdout
