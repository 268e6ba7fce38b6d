"""Synthetic interviews with known speech boundaries (espeak-ng), and noise at a given SNR.

Each answer is several separately synthesised phrases joined by short pauses
(200-400 ms, which must NOT end a turn); answers are separated by long pauses
(1.5-3 s, which must).  Phrases are trimmed at sample level, so the truth is
exact: an answer runs from its first phrase's first sample above -60 dBFS to its
last phrase's last such sample.  Audio is cached under bench/out/.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from workbench.store.synth import espeak

RATE = 16000
OUT = Path(__file__).resolve().parent / "out"
TRIM_DB = -60.0
SPEECH_RMS_DB = -23.0  # active-speech level, a typical close-mic level after browser AGC is off

PHRASES = [
    "Well, I started out as a backend developer",
    "mostly working on payment systems",
    "and after a few years I moved into a team lead role",
    "The hardest project was a migration of our billing database",
    "we had to keep the old and new systems in sync for three months",
    "I think communication matters more than any single tool",
    "so I write things down early",
    "and I ask for feedback before the design is fixed",
    "Honestly, I would like to work on something with real users",
    "that is why this position caught my attention",
    "In my free time I run and I read a lot of history",
    "My biggest weakness is probably that I take on too much",
    "I am learning to say no, politely",
    "We measured latency at every stage of the pipeline",
    "and found that one blocking call was holding the event loop",
]
VOICES = [("en-us", 165), ("en-gb", 150), ("en-us+f3", 175), ("en-gb-x-rp", 140)]


@dataclass(frozen=True)
class Interview:
    name: str
    audio: np.ndarray  # float32 mono 16 kHz
    truth: list[tuple[float, float]]  # (start, end) seconds of each answer

    @property
    def duration_s(self) -> float:
        return self.audio.shape[0] / RATE


def espeak_phrase(text: str, voice: str, speed: int) -> np.ndarray:
    """One phrase, 16 kHz float32, trimmed to its first/last sample above -60 dBFS (cached)."""
    key = hashlib.sha1(f"{voice}|{speed}|{text}".encode()).hexdigest()[:16]
    path = OUT / "phrases" / f"{key}.wav"
    if path.exists():
        x, _ = sf.read(path, dtype="float32")
        return x
    x, rate = espeak(text, voice, speed)
    x = soxr.resample(x, rate, RATE).astype(np.float32)
    x *= 0.5 / max(1e-9, float(np.abs(x).max()))
    above = np.nonzero(np.abs(x) >= 10 ** (TRIM_DB / 20))[0]
    x = x[above[0] : above[-1] + 1]
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, RATE, subtype="FLOAT")
    return x


def interview(seed: int, n_answers: int = 5) -> Interview:
    """A clean interview: 2-4 phrases per answer, short pauses inside, long pauses between answers."""
    rng = np.random.default_rng(seed)
    voice, speed = VOICES[seed % len(VOICES)]
    parts: list[np.ndarray] = [np.zeros(int(rng.uniform(0.8, 1.5) * RATE), np.float32)]
    truth: list[tuple[float, float]] = []
    pos = parts[0].shape[0]
    for a in range(n_answers):
        if a:
            gap = np.zeros(int(rng.uniform(1.5, 3.0) * RATE), np.float32)
            parts.append(gap)
            pos += gap.shape[0]
        start = pos
        k = int(rng.integers(2, 5))
        for p, idx in enumerate(rng.choice(len(PHRASES), size=k, replace=False)):
            if p:
                pause = np.zeros(int(rng.uniform(0.2, 0.4) * RATE), np.float32)
                parts.append(pause)
                pos += pause.shape[0]
            ph = espeak_phrase(PHRASES[idx], voice, speed)
            parts.append(ph)
            pos += ph.shape[0]
        truth.append((start / RATE, pos / RATE))
    parts.append(np.zeros(int(2.0 * RATE), np.float32))
    x = np.concatenate(parts)
    mask = np.zeros(x.shape[0], bool)
    for s, e in truth:
        mask[int(s * RATE) : int(e * RATE)] = True
    rms = float(np.sqrt(np.mean(x[mask] ** 2)))
    x *= 10 ** (SPEECH_RMS_DB / 20) / rms
    return Interview(f"interview{seed}", x.astype(np.float32), truth)


def add_noise(iv: Interview, snr_db: float, color: str, seed: int = 0) -> Interview:
    """Add stationary white or pink noise at ``snr_db`` below the active-speech RMS."""
    rng = np.random.default_rng(seed)
    n = iv.audio.shape[0]
    noise = rng.standard_normal(n)
    if color == "pink":
        spec = np.fft.rfft(noise)
        f = np.arange(spec.shape[0], dtype=np.float64)
        f[0] = 1.0
        noise = np.fft.irfft(spec / np.sqrt(f), n)
    elif color != "white":
        raise ValueError(f"noise color must be 'white' or 'pink', got {color!r}")
    noise *= 10 ** ((SPEECH_RMS_DB - snr_db) / 20) / np.sqrt(np.mean(noise**2))
    return Interview(f"{iv.name}+{color}{snr_db:g}dB", (iv.audio + noise).astype(np.float32), iv.truth)
