"""A labelled set of real human speech with thinking pauses, built from audio Debian packages ship.

Why: espeak speech with short inner pauses scores 0 errors at every setting, so it cannot show the
trade-off this workbench is for: a silence window short enough to answer quickly cuts a candidate off
while they think; one long enough not to makes every answer wait.  Here each *answer* is two real
recorded sentences of one speaker, with pauses stretched into them:

- ``hesitation``: silence inserted at the quietest word gap inside a sentence (mid-clause; the answer
  is plainly not over, so any ActivityEnd there is a false cut-off);
- ``boundary``: silence between the two sentences of the answer (a clause/sentence boundary, which a
  semantic end-of-turn model may fairly read as an end; it is still a false cut-off here, since the
  candidate goes on).

Pause lengths are drawn from 0.5-3 s (seeded).  An answer's end is a true end: the next answer starts
``gap_s`` later.  Background noise (seeded pink noise) can be mixed in at any SNR, measured against
the speech's active level.

Sources and licences (read from the Debian packages at build time, nothing is downloaded):

- ``pocketsphinx-testdata``: LibriVox recordings of *Sense and Sensibility* (16 kHz), public domain
  (LibriVox releases its recordings into the public domain).
- ``asterisk-core-sounds-en-wav``: Allison Smith's Asterisk prompts (8 kHz, resampled to 16 kHz),
  CC-BY-SA-3.0 (Debian copyright file); the set's files are a derived work under the same licence.

Labels are Audacity label tracks (``start<TAB>end<TAB>label``, seconds): ``<stem>.labels.txt`` holds
the answer spans (what ``workbench sweep`` reads), ``<stem>.pauses.txt`` the pause spans labelled
``hesitation`` or ``boundary``.  Import both into Audacity beside the audio to see them.

Run ``python -m workbench.store.speechset OUT_DIR`` (``--bundle`` makes the small set the tests use, under
``recordings/``; without it the full set at several SNRs).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workbench.core.pcm import SENT_RATE

RATE = SENT_RATE  # the set is kept at the rate the detector runs at
LIBRIVOX_DIR = Path("/usr/share/pocketsphinx/test/data/librivox")
ASTERISK_DIR = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
PAUSE_KINDS = ("hesitation", "boundary")
LICENCES = {
    "librivox": "LibriVox 'Sense and Sensibility' (pocketsphinx-testdata), public domain",
    "asterisk": "Allison Smith, Asterisk core sounds (asterisk-core-sounds-en-wav), CC-BY-SA-3.0",
}
# Asterisk prompts that are whole spoken sentences of a few seconds (no digits, no beeps).
ASTERISK_PROMPTS = (
    "vm-intro", "demo-thanks", "agent-alreadyon", "vm-newuser", "dir-instr", "vm-invalid-password",
    "vm-rec-temp", "vm-forwardoptions", "demo-enterkeywords", "queue-periodic-announce",
)
SNRS_DB = (None, 20.0, 15.0, 10.0)  # None = clean


@dataclass(frozen=True)
class Pause:
    """A stretched pause: ``start``..``end`` seconds of inserted silence, of ``kind`` hesitation|boundary."""

    start: float
    end: float
    kind: str


@dataclass(frozen=True)
class SpeechSet:
    """16 kHz float32 audio with answer spans (start, end s, true ends) and the pauses inside them."""

    samples: np.ndarray
    answers: list[tuple[float, float]]
    pauses: list[Pause]
    sources: list[str]  # per answer: "librivox" | "asterisk"


def available() -> bool:
    """True when at least one of the two Debian packages is installed (``make system`` installs both)."""
    return LIBRIVOX_DIR.is_dir() or ASTERISK_DIR.is_dir()


def _load(path: Path) -> np.ndarray:
    from workbench.store.audiofile import load_mono

    return load_mono(path, RATE)


def _levels_db(x: np.ndarray, win: int = RATE // 100) -> np.ndarray:
    n = x.shape[0] // win
    w = x[: n * win].reshape(n, win)
    return 10 * np.log10(np.maximum(np.einsum("ij,ij->i", w, w) / win, 1e-12))


def trim(x: np.ndarray, rel_db: float = -35.0) -> np.ndarray:
    """Cut leading and trailing silence: keep from the first to the last 10 ms window within
    ``rel_db`` of the loudest, so the sentence's last sample is its true end of speech."""
    lev = _levels_db(x)
    on = np.flatnonzero(lev >= lev.max() + rel_db)
    if on.size == 0:
        return x[:0]
    win = RATE // 100
    return x[on[0] * win : (on[-1] + 1) * win].copy()


def quietest_gap(x: np.ndarray, lo: float = 0.25, hi: float = 0.75) -> int:
    """Sample index of the quietest 50 ms inside the middle of a sentence: a word gap to stretch."""
    lev = _levels_db(x)
    k = 5
    smooth = np.convolve(lev, np.ones(k) / k, mode="same")
    a, b = int(lev.shape[0] * lo), int(lev.shape[0] * hi)
    i = a + int(np.argmin(smooth[a:b]))
    return i * (RATE // 100) + RATE // 200


def _fade(x: np.ndarray, at: int, ms: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Split at ``at`` with short fades either side, so the inserted silence does not click."""
    n = int(RATE * ms / 1000)
    a, b = x[:at].copy(), x[at:].copy()
    if a.shape[0] >= n:
        a[-n:] *= np.linspace(1, 0, n, dtype=np.float32)
    if b.shape[0] >= n:
        b[:n] *= np.linspace(0, 1, n, dtype=np.float32)
    return a, b


def sentences() -> list[tuple[str, np.ndarray]]:
    """The trimmed source sentences, (source, samples), in a fixed order."""
    out: list[tuple[str, np.ndarray]] = []
    if LIBRIVOX_DIR.is_dir():
        for p in sorted(LIBRIVOX_DIR.glob("*.wav")):
            out.append(("librivox", trim(_load(p))))
    if ASTERISK_DIR.is_dir():
        for name in ASTERISK_PROMPTS:
            p = ASTERISK_DIR / f"{name}.wav"
            if p.is_file():
                x = _load(p)
                out.append(("asterisk", trim(x / max(1e-6, float(np.abs(x).max())) * 0.5)))
    return out


def build(n_answers: int | None = None, seed: int = 0, lead_s: float = 1.0, gap_s: float = 3.5,
          pause_s: tuple[float, float] = (0.5, 3.0), level_dbfs: float = -20.0, rounds: int = 1) -> SpeechSet:
    """Answers of two same-speaker sentences, a hesitation stretched inside each and a boundary between.

    Every sentence is normalised to an active level of ``level_dbfs``; ``n_answers`` (default: all
    pairs the packages give) answers alternate between the sources.  ``rounds`` > 1 pairs the sentences
    again in a shuffled order (new pairs, new pause points and lengths).  Deterministic for a ``seed``.
    """
    rng = np.random.default_rng(seed)
    by_src: dict[str, list[np.ndarray]] = {}
    for src, x in sentences():
        if x.size:
            by_src.setdefault(src, []).append(x * _gain_to(x, level_dbfs))
    if not by_src:
        raise RuntimeError("no source speech: install pocketsphinx-testdata and/or asterisk-core-sounds-en-wav "
                           "(make system)")
    pairs: list[tuple[str, np.ndarray, np.ndarray]] = []
    for r in range(rounds):
        queues = {s: [v[i] for i in (range(len(v)) if r == 0 else rng.permutation(len(v)))]
                  for s, v in by_src.items()}
        while any(len(q) >= 2 for q in queues.values()):
            for s, q in queues.items():
                if len(q) >= 2:
                    pairs.append((s, q.pop(0), q.pop(0)))
    if n_answers is not None:
        pairs = pairs[:n_answers]
    parts: list[np.ndarray] = [np.zeros(int(lead_s * RATE), np.float32)]
    t = lead_s
    answers: list[tuple[float, float]] = []
    pauses: list[Pause] = []
    srcs: list[str] = []

    def add(x: np.ndarray) -> None:
        nonlocal t
        parts.append(x.astype(np.float32))
        t += x.shape[0] / RATE

    def silence(kind: str) -> None:
        d = round(float(rng.uniform(*pause_s)), 2)
        pauses.append(Pause(round(t, 4), round(t + d, 4), kind))
        add(np.zeros(int(round(d * RATE)), np.float32))

    for src, s1, s2 in pairs:
        a0 = t
        for i, s in enumerate((s1, s2)):
            lo = float(rng.uniform(0.2, 0.5))
            head, tail = _fade(s, quietest_gap(s, lo, lo + 0.3))
            add(head)
            silence("hesitation")
            add(tail)
            if i == 0:
                silence("boundary")
        answers.append((round(a0, 4), round(t, 4)))
        srcs.append(src)
        add(np.zeros(int(gap_s * RATE), np.float32))
    return SpeechSet(np.concatenate(parts), answers, pauses, srcs)


def _gain_to(x: np.ndarray, level_dbfs: float) -> float:
    lev = _levels_db(x)
    active = lev[lev >= lev.max() - 30]
    act_db = 10 * np.log10(np.mean(10 ** (active / 10)))
    return float(10 ** ((level_dbfs - act_db) / 20))


def pink_noise(n: int, seed: int = 0) -> np.ndarray:
    """Seeded pink (1/f) noise, unit RMS: a steady room/fan background."""
    rng = np.random.default_rng(seed)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spec.shape[0], dtype=np.float64)
    f[0] = 1.0
    y = np.fft.irfft(spec / np.sqrt(f), n)
    return (y / np.sqrt(np.mean(y * y))).astype(np.float32)


def with_noise(x: np.ndarray, answers: Sequence[tuple[float, float]], snr_db: float, seed: int = 0) -> np.ndarray:
    """``x`` plus pink noise at ``snr_db`` below the active speech level (10 ms windows within 30 dB of
    the loudest, inside the answers), so the SNR is the speech's, not diluted by the pauses."""
    spans = [x[int(a * RATE) : int(b * RATE)] for a, b in answers]
    lev = _levels_db(np.concatenate(spans))
    active = lev[lev >= lev.max() - 30]
    speech_ms = float(np.mean(10 ** (active / 10)))
    noise = pink_noise(x.shape[0], seed) * np.float32(np.sqrt(speech_ms / 10 ** (snr_db / 10)))
    return np.clip(x + noise, -1, 1).astype(np.float32)


def read_pauses(path: str | Path) -> list[Pause]:
    """Read a ``<stem>.pauses.txt`` label track back (kind in the third column)."""
    out: list[Pause] = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 3 or parts[2].strip() not in PAUSE_KINDS:
            raise ValueError(f"{path} line {i}: expected 'start<TAB>end<TAB>hesitation|boundary', got {line!r}")
        out.append(Pause(float(parts[0]), float(parts[1]), parts[2].strip()))
    return out


def pauses_beside(path: str | Path) -> Path | None:
    """``thinking.flac`` -> ``thinking.pauses.txt`` next to it, if present."""
    p = Path(path)
    cand = p.with_name(p.stem + ".pauses.txt")
    return cand if cand.is_file() else None


def write(ss: SpeechSet, path: Path, samples: np.ndarray | None = None) -> None:
    """Write ``path`` (FLAC, 16 kHz, 16 bit) and its two Audacity label tracks beside it."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, ss.samples if samples is None else samples, RATE, subtype="PCM_16")
    stem = path.with_suffix("")
    Path(f"{stem}.labels.txt").write_text(
        "".join(f"{a:.3f}\t{b:.3f}\tanswer {i} ({src})\n"
                for i, ((a, b), src) in enumerate(zip(ss.answers, ss.sources, strict=True), 1)))
    Path(f"{stem}.pauses.txt").write_text("".join(f"{p.start:.3f}\t{p.end:.3f}\t{p.kind}\n" for p in ss.pauses))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m workbench.store.speechset", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="output directory")
    ap.add_argument("--bundle", action="store_true", help="the small clean set the tests use (4 answers)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not available():
        print("workbench: error: no source speech; install pocketsphinx-testdata and/or "
              "asterisk-core-sounds-en-wav (make system)", file=sys.stderr)
        return 2
    if args.bundle:
        ss = build(n_answers=4, seed=args.seed)
        write(ss, args.out / "thinking.flac")
        print(f"wrote {args.out / 'thinking.flac'}: {len(ss.answers)} answers, {len(ss.pauses)} pauses")
        return 0
    ss = build(seed=args.seed, rounds=3)
    for snr in SNRS_DB:
        name = "thinking-clean.flac" if snr is None else f"thinking-{snr:g}dB.flac"
        x = ss.samples if snr is None else with_noise(ss.samples, ss.answers, snr, seed=args.seed)
        write(ss, args.out / name, x)
        print(f"wrote {args.out / name}: {len(ss.answers)} answers, {len(ss.pauses)} pauses")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
