"""PCM helpers shared by the live path and the replay: the sample rates, float/int16 conversion, level in dBFS."""

from __future__ import annotations

import math

import numpy as np

# The three sample rates of a session, defined here only (every other module imports them).
MIC_RATE = 48_000  # what WebRTC delivers (Opus decodes to 48 kHz): mic.flac, frames, the bundled tracks
SENT_RATE = 16_000  # what the bridge sends the Live API (audio/pcm;rate=16000): sent.flac, the turn detector
MODEL_RATE = 24_000  # what the Live API answers with: model.flac


def to_int16(samples: np.ndarray) -> np.ndarray:
    """Float [-1, 1) to int16 with clipping; int16 passes through."""
    if samples.dtype == np.int16:
        return samples
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype(np.int16)


_INT16_POWER = 1.0 / 32768.0**2


def level_dbfs(samples: np.ndarray) -> float:
    """RMS level in dBFS (full-scale sine = -3 dBFS); -120 for digital silence."""
    if samples.size == 0:
        return -120.0
    x = samples.astype(np.float32)
    ms = float(np.dot(x, x)) / x.size
    if samples.dtype == np.int16:
        ms *= _INT16_POWER
    return max(-120.0, 10.0 * math.log10(ms)) if ms > 0 else -120.0  # a Python float: np.float64 rounds slowly
