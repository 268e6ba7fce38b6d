"""Read audio files for the bridge and the replay, with one-line errors for bad input."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr


class AudioInputError(ValueError):
    """An input file cannot serve as a microphone; the message says why and what to do."""


def read_audio(path: str | os.PathLike[str]) -> tuple[np.ndarray, int, int]:
    """Read any file libsndfile knows: returns (float32 samples as frames x channels, rate, channels)."""
    p = Path(path)
    if not p.exists():
        raise AudioInputError(f"{p}: no such file")
    if p.is_dir():
        raise AudioInputError(f"{p}: is a directory, expected an audio file (wav, flac, ogg)")
    if p.stat().st_size == 0:
        raise AudioInputError(f"{p}: empty file")
    try:
        data, rate = sf.read(p, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        reason = str(exc).split(":")[-1].strip() or "unknown format"
        raise AudioInputError(f"{p}: not readable as audio ({reason}); use wav, flac or ogg") from None
    if data.shape[0] == 0:
        raise AudioInputError(f"{p}: contains no audio samples")
    if not np.all(np.isfinite(data)):
        raise AudioInputError(f"{p}: contains NaN or infinite samples")
    return data, int(rate), int(data.shape[1])


def load_mono(path: str | os.PathLike[str], rate: int) -> np.ndarray:
    """Read a file of any rate and channel count as mono float32 at ``rate`` (downmix, then soxr)."""
    data, file_rate, _ = read_audio(path)
    mono = data.mean(axis=1).astype(np.float32)
    if file_rate != rate:
        mono = soxr.resample(mono, file_rate, rate, quality="HQ").astype(np.float32)
    return mono
