"""End-of-turn model: Smart Turn v3.2 on onnxruntime, with Whisper-style log-mel features in numpy.

Why a model: silence alone cannot tell a candidate thinking from a candidate done; Smart Turn reads
the prosody of the turn's last 8 s and says "complete" or "incomplete".  It is wrong often enough
both ways (it calls many mid-clause hesitations complete, and some true ends incomplete; the
figures: ``bench/BENCHMARKS.md``, "End of turn: reading the figures") that the turn detector uses it
only as one voice beside the clock (see ``turns.py``), and a call costs enough CPU that live it runs
off the event loop (``ThreadedEndModel``).

The model file ``smart-turn-v3.2-cpu.onnx`` (BSD-2-Clause, Daily) ships inside pipecat-ai's wheel,
installed with ``pip install --no-deps pipecat-ai`` (none of pipecat's dependencies); it is found
without importing pipecat, or from ``$WORKBENCH_SMART_TURN_ONNX``.

Features, as the model was trained on (Whisper's feature extractor with an 8 s window): the waveform
normalised to zero mean and unit variance, a centred STFT (400-point periodic Hann window, hop 160,
reflect padding), power spectrum, 80 Slaney-normalised mel filters on the Slaney mel scale over
0-8 kHz, log10 floored at 1e-10, clamped to 8 below the maximum, then ``(x + 4) / 4``: (80, 800).
"""

from __future__ import annotations

import importlib.util
import os
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

RATE = 16000
WINDOW_S = 8.0  # the model reads the turn's last 8 s, zero-padded at the front when shorter
N_FFT = 400
HOP = 160
N_MELS = 80
SMART_TURN_ENV = "WORKBENCH_SMART_TURN_ONNX"
SMART_TURN_FILE = "smart-turn-v3.2-cpu.onnx"
END_MODEL_NAMES = ("none", "smart-turn")


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    lin = 3.0 * f / 200.0
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-9) / 1000.0) * (27.0 / np.log(6.4)), lin)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((m - 15.0) * (np.log(6.4) / 27.0)), 200.0 * m / 3.0)


@lru_cache(maxsize=1)
def mel_filters() -> np.ndarray:
    """(N_FFT//2 + 1, N_MELS) triangular filters, each scaled to unit area (Slaney norm)."""
    fft_hz = np.linspace(0, RATE / 2, N_FFT // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(RATE / 2), N_MELS + 2))
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    up = (fft_hz[:, None] - lo[None, :]) / (mid - lo)[None, :]
    down = (hi[None, :] - fft_hz[:, None]) / (hi - mid)[None, :]
    fb = np.maximum(0.0, np.minimum(up, down))
    return fb * (2.0 / (hi - lo))[None, :]


@lru_cache(maxsize=1)
def _hann() -> np.ndarray:
    n = np.arange(N_FFT)
    return 0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)  # periodic, as torch.hann_window / Whisper


def log_mel(audio: np.ndarray) -> np.ndarray:
    """Whisper-style log-mel features of 16 kHz audio: (N_MELS, len // HOP) float32 (800 frames for 8 s)."""
    x = np.asarray(audio, dtype=np.float64).reshape(-1)
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    pad = N_FFT // 2
    xp = np.pad(x, pad, mode="reflect")
    n_frames = 1 + (xp.shape[0] - N_FFT) // HOP
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n_frames)[:, None]
    spec = np.fft.rfft(xp[idx] * _hann()[None, :], axis=1)
    power = (spec.real**2 + spec.imag**2)[:-1]  # Whisper drops the last frame
    mel = power @ mel_filters()
    logs = np.log10(np.maximum(mel, 1e-10))
    logs = np.maximum(logs, logs.max() - 8.0)
    return ((logs + 4.0) / 4.0).T.astype(np.float32)


def last_window(audio: np.ndarray, window_s: float = WINDOW_S) -> np.ndarray:
    """The last ``window_s`` of ``audio``, zero-padded at the front when shorter."""
    n = int(window_s * RATE)
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    if x.shape[0] >= n:
        return x[-n:]
    return np.concatenate([np.zeros(n - x.shape[0], np.float32), x])


def smart_turn_path() -> Path | None:
    """Where ``smart-turn-v3.2-cpu.onnx`` is: $WORKBENCH_SMART_TURN_ONNX, else inside pipecat-ai's wheel."""
    env = os.environ.get(SMART_TURN_ENV)
    if env:
        return Path(env) if Path(env).is_file() else None
    spec = importlib.util.find_spec("pipecat")  # does not import pipecat (its __init__ needs loguru)
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "audio" / "turn" / "smart_turn" / "data" / SMART_TURN_FILE
        if p.is_file():
            return p
    return None


@lru_cache(maxsize=2)
def _session(path: str):  # noqa: ANN202 - onnxruntime is imported lazily
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # the bridge shares its cores with the event loop and other sessions
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


class SmartTurn:
    """``probability(audio)``: P(turn complete) for the turn's audio up to now (16 kHz float32)."""

    name = "smart-turn"

    def __init__(self) -> None:
        path = smart_turn_path()
        if path is None:
            raise RuntimeError(
                f"end model 'smart-turn' needs {SMART_TURN_FILE}: `pip install --no-deps pipecat-ai` "
                f"or set {SMART_TURN_ENV} to the file"
            )
        self._sess = _session(str(path))
        self.last_ms = 0.0  # wall time of the last call (features + inference), for the event log

    def probability(self, audio: np.ndarray) -> float:
        t0 = time.perf_counter()
        feats = log_mel(last_window(audio))[None, :, :]
        out = self._sess.run(None, {"input_features": feats})
        self.last_ms = (time.perf_counter() - t0) * 1000
        return float(np.asarray(out[0]).reshape(-1)[0])


class MemoEndModel:
    """A model that scores identical audio once (offline replays of many settings share most windows)."""

    def __init__(self, model: SmartTurn) -> None:
        self.model = model
        self.name = model.name
        self._memo: dict[bytes, float] = {}
        self.calls = 0

    def probability(self, audio: np.ndarray) -> float:
        import hashlib

        key = hashlib.blake2b(np.ascontiguousarray(audio, np.float32).tobytes(), digest_size=16).digest()
        p = self._memo.get(key)
        if p is None:
            p = self._memo[key] = self.model.probability(audio)
            self.calls += 1
        return p


class ThreadedEndModel:
    """Runs a model's ``probability`` on one worker thread: ``submit(audio)`` returns a Future.

    Why: one Smart Turn call takes tens to hundreds of ms of CPU ("End-of-turn model and the event
    loop" in ``bench/BENCHMARKS.md``); on the event loop it would stall every session's frames and
    pings for that long.  onnxruntime and numpy's FFT release the GIL, so the loop keeps running
    while the thread scores.  The turn detector polls the Future on its clock (``turns.py``).
    """

    def __init__(self, model: SmartTurn) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.model = model
        self.name = model.name
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="end-model")

    def submit(self, audio: np.ndarray):  # noqa: ANN201 - concurrent.futures.Future[float]
        return self._pool.submit(self.model.probability, audio)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class ReadyAfter:
    """A score that is ready at the ``polls + 1``-th ``done()``: a worker thread's latency, without its timing.

    Offline replays use it to charge inference time to the detector's decisions deterministically
    (``done()`` is looked at once per clock poll, see ``turns.py``).
    """

    def __init__(self, p: float, polls: int) -> None:
        self.p, self.left = p, polls

    def done(self) -> bool:
        self.left -= 1
        return self.left < 0

    def result(self) -> float:
        return self.p


def make_end_model(name: str) -> SmartTurn | None:
    """The end-of-turn model ``name`` names (``none`` -> None)."""
    if name == "none":
        return None
    if name == "smart-turn":
        return SmartTurn()
    raise ValueError(f"unknown end model {name!r}; choose one of {', '.join(END_MODEL_NAMES)}")
