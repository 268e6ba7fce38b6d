"""Read audio files for the bridge and the replay, with one-line errors for bad input."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr


class AudioInputError(ValueError):
    """An input file cannot serve as a microphone; the message says why and what to do."""


BLOCK_S = 10.0  # mono_blocks decodes this much audio at a time


def _check_file(p: Path) -> None:
    if not p.exists():
        raise AudioInputError(f"{p}: no such file")
    if p.is_dir():
        raise AudioInputError(f"{p}: is a directory, expected an audio file (wav, flac, ogg)")
    if p.stat().st_size == 0:
        raise AudioInputError(f"{p}: empty file")


def _not_readable(p: Path, exc: Exception) -> AudioInputError:
    reason = str(exc).split(":")[-1].strip() or "unknown format"
    return AudioInputError(f"{p}: not readable as audio ({reason}); use wav, flac or ogg")


def read_audio(path: str | os.PathLike[str]) -> tuple[np.ndarray, int, int]:
    """Read any file libsndfile knows: returns (float32 samples as frames x channels, rate, channels)."""
    p = Path(path)
    _check_file(p)
    try:
        data, rate = sf.read(p, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise _not_readable(p, exc) from None
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


def mono_blocks(path: str | os.PathLike[str], rate: int, block_s: float = BLOCK_S) -> Iterator[np.ndarray]:
    """A file of any rate and channel count as consecutive mono float32 blocks at ``rate``, streamed.

    The same samples as ``load_mono`` (downmix per block, then streaming soxr, which is bit-identical to the
    one-shot resampler whatever the block sizes), the same one-line errors, but only a few blocks are held at a
    time: memory stays flat in the file's length.  A thread decodes the next block while the caller works on
    this one (libsndfile releases the GIL while it decodes).
    """
    p = Path(path)
    _check_file(p)
    try:
        f = sf.SoundFile(p)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise _not_readable(p, exc) from None
    with f:
        if f.frames == 0:
            raise AudioInputError(f"{p}: contains no audio samples")
        file_rate = int(f.samplerate)
        n = max(1, round(block_s * file_rate))
        # 16-bit files decode to int16 and scale here: the same float32 libsndfile would make (x / 32768 is
        # exact), without its slower float path.
        as_int16 = f.subtype == "PCM_16"
        blocks: queue.Queue[np.ndarray | BaseException | None] = queue.Queue(maxsize=2)
        stop = threading.Event()

        def decode() -> None:
            try:
                while not stop.is_set():
                    data = f.read(n, dtype="int16" if as_int16 else "float32", always_2d=False)
                    if data.shape[0] == 0:
                        break
                    if as_int16:
                        scaled = data.astype(np.float32)
                        scaled *= np.float32(1 / 32768)
                        data = scaled
                    elif not np.all(np.isfinite(data)):  # 16-bit samples are always finite
                        raise AudioInputError(f"{p}: contains NaN or infinite samples")
                    blocks.put(data.mean(axis=1, dtype=np.float32) if data.ndim == 2 else data)
            except BaseException as exc:  # noqa: BLE001 - handed to the reader, raised there
                blocks.put(exc)
            blocks.put(None)

        reader = threading.Thread(target=decode, name="workbench-decode", daemon=True)
        reader.start()
        stream = soxr.ResampleStream(file_rate, rate, 1, dtype="float32", quality="HQ") if file_rate != rate else None
        try:
            while True:
                data = blocks.get()
                if data is None:
                    break
                if isinstance(data, BaseException):
                    if isinstance(data, sf.LibsndfileError | RuntimeError | TypeError):
                        raise _not_readable(p, data)
                    raise data
                mono = stream.resample_chunk(data) if stream is not None else data
                if mono.size:
                    yield mono
            if stream is not None:
                tail = stream.resample_chunk(np.zeros(0, np.float32), last=True)
                if tail.size:
                    yield tail
        finally:
            stop.set()
            while reader.is_alive():  # unblock a decoder waiting on a full queue, then let it finish
                try:
                    blocks.get(timeout=0.05)
                except queue.Empty:
                    pass
            reader.join()
