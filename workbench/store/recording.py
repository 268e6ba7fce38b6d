"""Write and read ``recordings/<session>/``: the evidence a session leaves behind.

Layout of a recording directory:

- ``session.json``: config, VAD parameters, model, package versions, start wall time;
  rewritten at the end with a summary (``ended``: true).  A recording whose
  ``session.json`` lacks ``ended`` was cut short.
- ``events.jsonl``: one event per line (``workbench.core.events``), appended as it happens and handed to
  the OS every ``EVENT_FLUSH_S`` (a failure's events at once).
- ``mic.flac``: the microphone as received (48 kHz mono), placed by media time, so that
  sample ``i`` is at session time ``mic_start_t + i / MIC_RATE``; frame gaps are zero-filled.
- ``sent.flac``: the 16 kHz audio actually handed to the Live session, back to back.
- ``model.flac``: the model's 24 kHz audio, back to back.

The FLAC files are 16-bit mono.  With ``raw_audio`` (``workbench.tap``) each is written as raw PCM
(``mic.s16``, ...) during the session and compressed to FLAC by a thread after ``close``; the loader
reads the raw file while there is no FLAC one.

The recorder is an observer: stages hand it events and audio; it never calls back.
Events reach the OS every 100 ms and audio block by block, so a killed process leaves a readable recording
that lacks at most its last 100 ms of events and two audio blocks.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson
import pandas as pd
import soundfile as sf

from workbench.core.events import Event, Frame, from_dict
from workbench.core.pcm import MIC_RATE, MODEL_RATE, SENT_RATE

AUDIO_FILES = {"mic": ("mic.flac", MIC_RATE), "sent": ("sent.flac", SENT_RATE), "model": ("model.flac", MODEL_RATE)}
# A gap longer than this in the mic's media time is not zero-filled in full (a stalled sender
# could otherwise make the file grow without bound); the frame events still show the real gap.
MAX_FILL_S = 120.0
# Samples gathered per FLAC write: libsndfile encodes a 20 ms frame per write for about twice the CPU
# (bench/BENCHMARKS.md, "Costs behind the code's choices").
AUDIO_BLOCK = 8192
# Events reach the OS at least this often (a write per event costs a system call, ~100 a second a session);
# these kinds at once, so the evidence of a failure is on disk even if the process dies right after it.
EVENT_FLUSH_S = 0.1
FLUSH_AT_ONCE = frozenset({"session", "error", "watchdog", "ws"})


def _plain(value: Any) -> Any:
    """What orjson does not write itself: numpy scalars (a level computed by numpy) become Python numbers."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot record a {type(value).__name__} in an event")


def _event_line(event: Event) -> bytes:
    # orjson: an order of magnitude cheaper an event than json's encoder, at ~100 events a second a session
    # (bench/BENCHMARKS.md, "Costs behind the code's choices")
    return orjson.dumps(event.to_dict(), default=_plain) + b"\n"


# A ``frame`` event in compact form: (t, pts_s, n_samples, level_db) at MIC_RATE, already rounded as the
# pipeline rounds them (``t`` and ``pts_s`` to the µs, as ``Event.to_dict`` writes ``t``).  A microphone makes
# 50 a second a session; a row is one tuple where the event would be a dataclass, its dict and its line
# (``frame_line`` writes the same line).
FrameRow = tuple[float, float, int, float]


def frame_line(t: float, pts_s: float, n_samples: int, level_db: float) -> bytes:
    """The line ``_event_line(Frame(t=t, pts_s=pts_s, n_samples=n_samples, rate=MIC_RATE, level_db=level_db))``
    writes, byte for byte, without building the event; ``t`` is already rounded to the µs (a row's is)."""
    return orjson.dumps({"t": t, "kind": Frame.kind, "pts_s": pts_s, "n_samples": n_samples,
                         "rate": MIC_RATE, "level_db": level_db}) + b"\n"


class RecordingError(Exception):
    """A recording cannot be read; the message names the file and the problem."""


@functools.cache
def _versions() -> tuple[tuple[str, str], ...]:
    # importlib.metadata parses each package's METADATA (milliseconds a package, bench/BENCHMARKS.md, "Costs behind
    # the code's choices"): once per process, so the loop does not stall at every session start
    out = {}
    for name in ("workbench", "google-genai", "websockets", "aiortc", "av", "soxr", "numpy", "webrtcvad-wheels"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    out["python"] = platform.python_version()
    return tuple(out.items())


def package_versions() -> dict[str, str]:
    return dict(_versions())


RAW_SUFFIX = ".s16"  # mic.s16: raw 16-bit little-endian mono PCM, before it becomes mic.flac
COMPRESS_CHUNK = 1 << 20  # samples read and encoded at a time when a raw file becomes FLAC


def _as_int16(samples: np.ndarray) -> np.ndarray:
    """What the audio files hold: int16 as is, float [-1, 1) scaled (truncated) and clipped."""
    if samples.dtype == np.int16:
        return samples
    return np.clip(np.asarray(samples, dtype=np.float32) * 32768.0, -32768, 32767).astype(np.int16)


class _RawStream:
    """Raw 16-bit PCM appended as it comes (``mic.s16``), compressed to ``mic.flac`` by ``compress`` after close.

    Why: the tap runs inside the user's bridge, between their own calls, so each call of the
    recorder starts from cold caches and an encoder costs there several times its cost in a warm
    loop (``bench/BENCHMARKS.md``, "Recording a user's bridge").  Appending raw samples is one
    ``write`` a call; the FLAC encode runs once, in one warm pass, after the session.  A killed
    process leaves every sample written so far (the loader reads ``.s16`` when there is no
    ``.flac``).  The cost is disk during the session: 96 kB a second for the 48 kHz microphone.
    """

    def __init__(self, path: Path, rate: int) -> None:
        self.path = path  # the FLAC file it becomes
        self.raw = path.with_suffix(RAW_SUFFIX)
        self.rate = rate
        self._fd: int | None = os.open(self.raw, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.n_samples = 0

    def write(self, samples: np.ndarray) -> None:
        if samples.size == 0 or self._fd is None:
            return
        samples = _as_int16(samples)
        view = memoryview(np.ascontiguousarray(samples.reshape(-1), dtype="<i2")).cast("B")
        while view:  # a regular file takes it whole unless the disk is full
            view = view[os.write(self._fd, view):]
        self.n_samples += samples.size

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def compress(self) -> None:
        """``.s16`` -> ``.flac`` (libsndfile, its default level 5) under a temporary name, renamed, then the raw
        file removed; a crash at any point leaves either the raw file or the whole FLAC file."""
        part = self.path.with_name(self.path.name + ".part")
        if self.n_samples == 0:
            part.write_bytes(b"")  # an empty file: no audio, as the loader reads it
        else:
            with open(self.raw, "rb") as src, sf.SoundFile(part, "w", samplerate=self.rate, channels=1,
                                                           subtype="PCM_16", format="FLAC") as out:
                while chunk := src.read(2 * COMPRESS_CHUNK):
                    out.write(np.frombuffer(chunk, "<i2"))
        os.replace(part, self.path)
        self.raw.unlink()


class _FlacStream:
    """An append-only FLAC file that a killed process leaves readable up to its last whole block.

    Samples are copied into a block of ``AUDIO_BLOCK`` samples, which goes to the encoder whole: its
    FLAC encoder costs about half as much per frame fed that way as one 20 ms frame at a time
    (``bench/BENCHMARKS.md``, "Costs behind the code's choices").  The encode runs on the caller's
    thread (the event loop), a block a few times a second; a thread of its own cost more CPU in hand-overs than it saved
    the loop (``bench/BENCHMARKS.md``).  The encoder hands each encoded FLAC frame to the OS at
    once, so after a SIGKILL the file holds everything but the block being gathered and the one
    being encoded (≤ 256 ms of mic, 768 ms of sent audio) and lacks only its length, which the
    loader does without.  No ``flush()``: for FLAC it is only an ``fsync``, which blocks the event
    loop and guards against power loss, not a crash.
    """

    def __init__(self, path: Path, rate: int) -> None:
        self.path = path
        self.rate = rate
        self._file = sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16", format="FLAC")
        self._block = np.empty(AUDIO_BLOCK, np.int16)
        self._fill = 0
        self.n_samples = 0

    def write(self, samples: np.ndarray) -> None:
        if samples.size == 0:
            return
        samples = _as_int16(samples)
        x = samples.reshape(-1)
        self.n_samples += x.size
        while x.size:
            n = min(x.size, AUDIO_BLOCK - self._fill)
            self._block[self._fill:self._fill + n] = x[:n]
            self._fill += n
            x = x[n:]
            if self._fill == AUDIO_BLOCK:
                self._encode()

    def _encode(self) -> None:
        if self._fill:
            self._file.write(self._block[:self._fill])
            self._fill = 0

    def close(self) -> None:
        """Encode what is gathered and finish the file."""
        if not self._file.closed:
            try:
                self._encode()
            finally:
                self._file.close()




class Observer(Protocol):
    """Watches a session as it is recorded (the browser page does): events and the model's audio."""

    def event(self, event: Event) -> None: ...

    def model_audio(self, samples24k: np.ndarray) -> None: ...


class Recorder:
    """Writes one session's recording directory as the session runs; an optional observer sees the same."""

    def __init__(self, out_dir: str | os.PathLike[str], meta: dict[str, Any], observer: Observer | None = None,
                 raw_audio: bool = False) -> None:
        """``raw_audio``: write the audio raw and compress it to FLAC after ``close`` (``_RawStream``); the
        workbench's own bridge encodes FLAC as it goes (``_FlacStream``)."""
        self.observer = observer
        self.dir = Path(out_dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RecordingError(f"cannot create recording directory {self.dir}: {exc.strerror}") from None
        if (self.dir / "events.jsonl").exists():
            raise RecordingError(f"{self.dir} already holds a recording; choose another --out or delete it")
        self.meta = {
            "format": 1,
            "start_wall": time.time(),
            "start_wall_iso": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": package_versions(),
            **meta,
        }
        self._write_meta()
        self._events = open(self.dir / "events.jsonl", "ab")
        self._flushed_t = float("-inf")
        stream = _RawStream if raw_audio else _FlacStream
        self._audio: dict[str, _FlacStream | _RawStream] = {key: stream(self.dir / name, rate)
                                                             for key, (name, rate) in AUDIO_FILES.items()}
        self.compressed = threading.Event()  # set once every FLAC file is final (at close without raw_audio)
        self.compress_error: BaseException | None = None
        self._mic_next: int | None = None  # next mic sample index expected, in 48 kHz media samples
        self._mic_origin: int = 0
        self.closed = False

    def _write_meta(self) -> None:
        tmp = self.dir / "session.json.tmp"
        tmp.write_text(json.dumps(self.meta, indent=2, default=str))
        tmp.replace(self.dir / "session.json")

    def emit(self, event: Event) -> None:
        """Append one event; events reach the OS within ``EVENT_FLUSH_S`` (``FLUSH_AT_ONCE`` kinds at once)."""
        if self.closed:
            return
        self._events.write(_event_line(event))
        if event.t - self._flushed_t >= EVENT_FLUSH_S or event.kind in FLUSH_AT_ONCE:
            self._events.flush()
            self._flushed_t = event.t
        if self.observer is not None:
            self.observer.event(event)

    def emit_items(self, items: list[FrameRow | Event], flush: bool = False) -> None:
        """Append events in order, ``FrameRow``s as ``frame`` events, in one write; handed to the OS as ``emit``
        hands them, or at once with ``flush`` (``workbench.tap`` writes once a tick)."""
        if self.closed or not items:
            return
        if self.observer is not None:  # the observer sees events, so each row becomes one
            for x in items:
                self.emit(x if isinstance(x, Event) else Frame(t=x[0], pts_s=x[1], n_samples=x[2], rate=MIC_RATE,
                                                               level_db=x[3]))
            return
        self._events.write(b"".join([frame_line(*x) if type(x) is tuple else _event_line(x) for x in items]))
        last = items[-1]
        t = last[0] if type(last) is tuple else last.t
        if flush or t - self._flushed_t >= EVENT_FLUSH_S or any(type(x) is not tuple and x.kind in FLUSH_AT_ONCE
                                                                for x in items):
            self._events.flush()
            self._flushed_t = t

    def mic(self, t: float, pts_samples: int, samples: np.ndarray) -> None:
        """Place a received 48 kHz frame at its media position (``pts_samples``), zero-filling gaps."""
        if self.closed:
            return
        if self._mic_next is None:
            self._mic_origin = pts_samples
            self._mic_next = pts_samples
            self.meta["mic_start_t"] = round(t, 6)
            self._write_meta()
        gap = pts_samples - self._mic_next
        if gap > 0:
            self._audio["mic"].write(np.zeros(min(gap, int(MAX_FILL_S * MIC_RATE)), np.int16))
        elif gap < 0:
            samples = samples[-gap:]  # overlaps audio already written: keep only the new part
        self._audio["mic"].write(samples)
        self._mic_next = max(self._mic_next, pts_samples + len(samples) - min(gap, 0))

    def sent(self, samples16k: np.ndarray) -> None:
        if not self.closed:
            self._audio["sent"].write(samples16k)

    def model(self, samples24k: np.ndarray) -> None:
        if not self.closed:
            self._audio["model"].write(samples24k)
            if self.observer is not None:
                self.observer.model_audio(samples24k)

    def close(self, **summary: Any) -> None:
        """Finish the files and mark the recording complete."""
        if self.closed:
            return
        self.closed = True
        self._events.close()
        failed: BaseException | None = None  # raised below (disk full), once the recording is marked complete
        for stream in self._audio.values():
            try:
                stream.close()
            except Exception as exc:
                failed = failed or exc
        self.meta.update(summary)
        self.meta["ended"] = True
        self.meta["samples"] = {k: s.n_samples for k, s in self._audio.items()}
        self._write_meta()
        raw = [s for s in self._audio.values() if isinstance(s, _RawStream)]
        if raw and failed is None:
            # not daemon: an interpreter that exits waits for the FLAC files
            threading.Thread(target=self._compress, args=(raw,), name=f"compress {self.dir.name}").start()
        else:
            self.compressed.set()
        if failed is not None:
            raise failed

    def _compress(self, streams: list[_RawStream]) -> None:
        try:
            for stream in streams:
                stream.compress()
        except Exception as exc:  # disk full: the raw files stay, and load() reads them
            self.compress_error = exc
        finally:
            self.compressed.set()

    def wait_compressed(self, timeout: float | None = None) -> bool:
        """Block until the FLAC files are final (``raw_audio``: compressed after ``close``); False on timeout."""
        return self.compressed.wait(timeout)


@dataclass
class Recording:
    """A loaded recording: events as a DataFrame, audio as float32 arrays."""

    path: Path
    meta: dict[str, Any]
    events: pd.DataFrame
    mic: np.ndarray
    sent: np.ndarray
    model: np.ndarray
    problems: list[str] = field(default_factory=list)
    mic_rate: int = MIC_RATE
    sent_rate: int = SENT_RATE
    model_rate: int = MODEL_RATE

    @property
    def cut_short(self) -> bool:
        """True when the session never closed its recording (killed or crashed)."""
        return not self.meta.get("ended", False)

    @property
    def mic_start_t(self) -> float:
        return float(self.meta.get("mic_start_t", 0.0))

    def of_kind(self, kind: str) -> pd.DataFrame:
        """The events of one kind, with only the columns that kind uses."""
        df = self.events[self.events["kind"] == kind]
        return df.dropna(axis=1, how="all").reset_index(drop=True)


def _parse_line(line: str) -> Any:
    """orjson for speed; json where orjson is stricter (NaN, integers past 64 bits, as older recordings hold)."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return json.loads(line)


def _read_events(path: Path, problems: list[str]) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        lines = fh.read().split("\n")
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = _parse_line(line)
            if not isinstance(d, dict) or not isinstance(d.get("t"), (int, float)):
                raise ValueError("not an event object with a numeric t")
        except ValueError as exc:
            last = i == len(lines) or (i == len(lines) - 1 and not lines[-1])
            problems.append(
                f"events.jsonl line {i}: {'truncated last line (cut short)' if last else 'unreadable'}: {exc}"
            )
            continue
        rows.append(from_dict(d).to_dict())
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame({"t": pd.Series(dtype=float), "kind": pd.Series(dtype=str)})
    return df.sort_values("t", kind="stable").reset_index(drop=True)


def _empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def _raw_only(path: Path) -> bool:
    """A ``raw_audio`` stream not yet (or never) compressed: ``mic.s16`` and no ``mic.flac``."""
    return not path.exists() and path.with_suffix(RAW_SUFFIX).exists()


def _read_raw(path: Path, problems: list[str], ended: bool) -> np.ndarray:
    """The raw file behind ``path``: complete, whether the recorder is still compressing it (``ended``) or was
    killed before it could (a problem worth saying: the recording was cut short)."""
    raw = path.with_suffix(RAW_SUFFIX)
    data = raw.read_bytes()
    x = np.frombuffer(data[: len(data) // 2 * 2], "<i2").astype(np.float32) / 32768.0
    if not ended:
        problems.append(f"{raw.name}: raw audio of a recording cut short, read in full ({x.size} samples; "
                        f"never compressed to {path.name})")
    return x


def _read_audio(path: Path, problems: list[str]) -> np.ndarray:
    if not path.exists():
        problems.append(f"{path.name}: missing")
        return np.zeros(0, np.float32)
    try:
        with sf.SoundFile(path) as f:
            # libsndfile writes the FLAC length on close; a killed writer leaves it unknown (huge or 0)
            finalised = 0 < f.frames < 2**40
    except Exception as exc:  # not audio, or damaged before the first block
        problems.append(f"{path.name}: unreadable ({_one_line(exc)})")
        return np.zeros(0, np.float32)
    data = None
    if finalised:
        try:
            data = sf.read(path, dtype="float32", always_2d=True)[0]
        except Exception as exc:  # truncated or damaged after the header: keep what decodes
            data = _read_audio_partial(path)
            problems.append(f"{path.name}: damaged; read {data.shape[0]} samples before an error ({_one_line(exc)})")
    else:
        data = _read_audio_partial(path)
        problems.append(f"{path.name}: not finalised (cut short); read {data.shape[0]} samples "
                        "up to the last whole block")
    return np.ascontiguousarray(data[:, 0], dtype=np.float32)


def _read_audio_partial(path: Path) -> np.ndarray:
    """Read block by block up to the first error: a killed session leaves a FLAC without its length.

    The error is where the cut block begins, so it is the expected end, not a problem of its own.
    """
    out: list[np.ndarray] = []
    try:
        with sf.SoundFile(path) as f:
            while True:
                block = f.read(4096, dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    break
                out.append(block)
    except Exception:
        pass
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def load(path: str | os.PathLike[str]) -> Recording:
    """Load a recording directory written by ``Recorder``.

    Raises ``RecordingError`` with a one-line message when ``path`` is not a recording.
    Damage short of that (a truncated last line, a cut FLAC) is listed in ``problems``.
    """
    p = Path(path)
    if not p.is_dir():
        raise RecordingError(f"{p}: not a recording directory (expected session.json and events.jsonl inside)")
    problems: list[str] = []
    meta_path = p / "session.json"
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        raise RecordingError(f"{p}: no session.json, so this is not a workbench recording") from None
    except ValueError as exc:
        raise RecordingError(f"{meta_path}: corrupt session.json ({exc})") from None
    events_path = p / "events.jsonl"
    if not events_path.exists():
        raise RecordingError(f"{p}: no events.jsonl, so this is not a workbench recording")
    events = _read_events(events_path, problems)
    written = meta.get("samples", {}) if meta.get("ended") else {}
    # libsndfile leaves a FLAC it never got a sample for as an empty file: an empty stream, not damage
    # (a session the model never answered has an empty model.flac)
    audio = {key: _read_raw(p / name, problems, bool(meta.get("ended"))) if _raw_only(p / name) else
             np.zeros(0, np.float32) if written.get(key) == 0 and _empty(p / name) else
             _read_audio(p / name, problems) for key, (name, _) in AUDIO_FILES.items()}
    return Recording(path=p, meta=meta, events=events, problems=problems, **audio)
