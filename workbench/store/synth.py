"""Make the bundled "candidate" microphone track with espeak-ng, so the project owns its test audio.

The track is an interview from the candidate's side: answers made of phrases with short pauses
inside, and long stretches of digital silence between answers while the agent speaks.  Those
all-zero stretches are where a DTX sender stops sending packets (Failure B).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from workbench.core.pcm import MIC_RATE

RATE = MIC_RATE  # the bundled track plays as a microphone
ANSWERS = [
    ["Thanks, happy to be here.", "I have five years of experience with real time audio."],
    ["At my last job I built a streaming pipeline.", "It carried voice calls from the browser to our servers."],
    ["The hardest bug was a session that closed after the user spoke.", "We found it by recording every message."],
]


def espeak(text: str, voice: str = "en-us", wpm: int = 165) -> tuple[np.ndarray, int]:
    """espeak-ng's own output for one phrase: float32 samples and their rate (the benchmarks' synth uses it too)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "p.wav"
        subprocess.run([exe, "-v", voice, "-s", str(wpm), "-w", str(wav), text], check=True, capture_output=True)
        data, rate = sf.read(wav, dtype="float32")
    return data, rate


def speak(text: str, voice: str = "en-us", wpm: int = 165) -> np.ndarray:
    """Synthesise one phrase at 48 kHz float32, trimmed to its first and last audible sample."""
    data, rate = espeak(text, voice, wpm)
    data = soxr.resample(data, rate, RATE).astype(np.float32)
    loud = np.flatnonzero(np.abs(data) > 1e-3)
    return data[loud[0] : loud[-1] + 1] * 0.5 if loud.size else data


def make_candidate(
    answers: list[list[str]] = ANSWERS,
    lead_s: float = 0.5,
    inner_pause_s: float = 0.3,
    between_s: float = 3.5,
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Return (int16 48 kHz track, [(answer_start_s, answer_end_s), ...])."""
    parts: list[np.ndarray] = [np.zeros(int(lead_s * RATE), np.float32)]
    truth = []
    pos = parts[0].size
    for i, phrases in enumerate(answers):
        start = pos
        for j, text in enumerate(phrases):
            if j:
                gap = np.zeros(int(inner_pause_s * RATE), np.float32)
                parts.append(gap)
                pos += gap.size
            speech = speak(text)
            parts.append(speech)
            pos += speech.size
        truth.append((start / RATE, pos / RATE))
        tail = np.zeros(int(between_s * RATE if i < len(answers) - 1 else 0.5 * RATE), np.float32)
        parts.append(tail)
        pos += tail.size
    track = np.concatenate(parts)
    return np.clip(np.round(track * 32767), -32768, 32767).astype(np.int16), truth


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write the bundled candidate track (FLAC, 48 kHz mono).")
    ap.add_argument("out", nargs="?", default="recordings/candidate.flac")
    args = ap.parse_args(argv)
    track, truth = make_candidate()
    sf.write(args.out, track, RATE, subtype="PCM_16")
    Path(args.out).with_suffix(".labels.txt").write_text(
        "".join(f"{a:.3f}\t{b:.3f}\tanswer {i + 1}\n" for i, (a, b) in enumerate(truth))
    )
    print(f"wrote {args.out}: {track.size / RATE:.1f} s, answers at {[(round(a, 2), round(b, 2)) for a, b in truth]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
