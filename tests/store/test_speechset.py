"""The real-speech set with thinking pauses: labels are consistent, the bundle is the script's output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO

from workbench.analysis.sweep import read_labels
from workbench.store import speechset

BUNDLE = REPO / "recordings" / "thinking.flac"


def test_bundle_labels_are_two_audacity_tracks_with_pauses_inside_answers() -> None:
    answers = read_labels(REPO / "recordings" / "thinking.labels.txt")
    pauses = speechset.read_pauses(speechset.pauses_beside(BUNDLE))
    assert len(answers) == 4 and len(pauses) == 12
    assert {p.kind for p in pauses} == {"hesitation", "boundary"}
    for p in pauses:
        assert 0.5 - 1e-3 <= p.end - p.start <= 3.0 + 1e-3
        assert any(a < p.start and p.end < b for a, b in answers)  # the answer goes on after every pause
    x, rate = sf.read(BUNDLE, dtype="float32")
    assert rate == 16000
    for p in pauses:  # the pause is silence in the clean bundle
        assert np.abs(x[int(p.start * rate) + 80 : int(p.end * rate) - 80]).max() < 1e-3
    for _a, b in answers:  # speech right up to the labelled end, then silence: a true end
        assert np.abs(x[int(b * rate) - 160 : int(b * rate)]).max() > 1e-3
        assert np.abs(x[int(b * rate) + 80 : int(b * rate) + 16000]).max() < 1e-3


@pytest.mark.skipif(not speechset.available(), reason="pocketsphinx-testdata / asterisk-core-sounds-en-wav absent")
def test_bundle_is_what_the_script_makes(tmp_path: Path) -> None:
    assert speechset.main([str(tmp_path), "--bundle"]) == 0
    for suffix in (".labels.txt", ".pauses.txt"):
        assert (tmp_path / f"thinking{suffix}").read_text() == (REPO / "recordings" / f"thinking{suffix}").read_text()
    a, _ = sf.read(tmp_path / "thinking.flac", dtype="int16")
    b, _ = sf.read(BUNDLE, dtype="int16")
    assert np.array_equal(a, b)


def test_noise_is_mixed_at_the_asked_snr() -> None:
    x, _ = sf.read(BUNDLE, dtype="float32")
    answers = read_labels(REPO / "recordings" / "thinking.labels.txt")
    y = speechset.with_noise(x, answers, 15.0, seed=1)
    noise = y - x
    lev = speechset._levels_db(np.concatenate([x[int(a * 16000) : int(b * 16000)] for a, b in answers]))
    active = lev[lev >= lev.max() - 30]
    speech_db = 10 * np.log10(np.mean(10 ** (active / 10)))
    noise_db = 10 * np.log10(np.mean(noise.astype(np.float64) ** 2))
    assert speech_db - noise_db == pytest.approx(15.0, abs=0.2)
    assert np.array_equal(y, speechset.with_noise(x, answers, 15.0, seed=1))  # seeded


def test_read_pauses_rejects_an_unknown_kind(tmp_path: Path) -> None:
    bad = tmp_path / "x.pauses.txt"
    bad.write_text("1.0\t2.0\tcough\n")
    with pytest.raises(ValueError, match="line 1"):
        speechset.read_pauses(bad)
