"""Pluggable speech scorers for the turn detector, selected by name.

A scorer looks at fixed windows of 16 kHz mono float32 samples (full scale = 1.0)
and says, per window, whether the window may *enter* speech (``start``) and
whether it may *stay* in speech (``stay``).  Two flags give every scorer its own
hysteresis while the turn logic stays the same.  Units of ``score``:

- ``energy``: window RMS in dBFS (the level itself); start at ``start_db``, stay at ``stop_db``.
  With ``noise_margin_db`` > 0 the thresholds also rise above an adaptive noise floor (see
  ``NoiseFloor``): start at ``max(start_db, floor + noise_margin_db)``, stay that less
  ``start_db - stop_db``, judged on a 50 ms smoothed level, so a steady background at 15 dB SNR
  neither holds every turn open nor starts one.
- ``webrtcvad``: 1.0 speech / 0.0 not speech from WebRTC's GMM VAD (``webrtcvad_mode`` 0-3,
  windows of ``webrtcvad_frame_ms``); start = stay = the VAD's answer.
- ``silero``: speech probability 0..1 from Silero VAD v5/v6 (ONNX, 512-sample windows = 32 ms),
  start at ``silero_threshold``, stay at ``silero_neg_threshold``.  Runs on onnxruntime alone:
  the model file comes from the ``silero-vad`` wheel installed with ``--no-deps`` (no PyTorch).
"""

from __future__ import annotations

import importlib.util
import os
from collections import deque
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np

if TYPE_CHECKING:
    from workbench.core.turns import TurnParams

SCORER_NAMES = ("energy", "webrtcvad", "silero")
SILERO_ENV = "WORKBENCH_SILERO_ONNX"


class Scorer(Protocol):
    name: ClassVar[str]
    unit: ClassVar[str]
    window: int  # samples per scored window

    def score(self, windows: np.ndarray, level_db: np.ndarray) -> tuple[list[float], list[bool], list[bool]]:
        """Score ``windows`` (n, window) float32; returns (score, start, stay) per window."""
        ...

    def start_reason(self, score: float, level_db: float, speech_ms: float) -> str:
        """One line saying why a turn started, for the event log."""
        ...


class NoiseFloor:
    """Minimum statistics (after R. Martin, 2001): the background level is the minimum of the smoothed
    level over the last ``span_s``, kept as per-block minima so each window costs O(1).

    Why a minimum: between words and in pauses the level falls to the background even while
    someone talks, so the minimum over a few seconds tracks the noise and not the speech, and it
    follows a background that gets louder within ``span_s``.  Sans-I/O: fed window levels in order.
    """

    def __init__(self, window_s: float, span_s: float = 3.0, block_s: float = 0.25, smooth_s: float = 0.05) -> None:
        self._per_block = max(1, round(block_s / window_s))
        self._blocks: deque[float] = deque(maxlen=max(1, round(span_s / block_s)))
        self._cur = np.inf
        self._n = 0
        self._alpha = min(1.0, window_s / smooth_s)
        self._ms: float | None = None  # smoothed mean square (linear), not dB: averaging dB would bias low
        self.smoothed_db = -120.0
        self.floor_db = -120.0

    def push(self, level_db: float) -> None:
        ms = 10 ** (level_db / 10)
        self._ms = ms if self._ms is None else self._ms + self._alpha * (ms - self._ms)
        self.smoothed_db = 10 * np.log10(max(self._ms, 1e-12))
        self._cur = min(self._cur, self.smoothed_db)
        self._n += 1
        if self._n == self._per_block:
            self._blocks.append(self._cur)
            self._cur, self._n = np.inf, 0
        self.floor_db = min(min(self._blocks, default=np.inf), self._cur)


class EnergyScorer:
    """Window RMS in dBFS against two thresholds: cheap, deterministic, gain-dependent.

    ``noise_margin_db`` > 0 adds the adaptive noise floor (module docstring); 0 keeps the fixed
    thresholds alone (and the sweep's exact fast path).
    """

    name: ClassVar[str] = "energy"
    unit: ClassVar[str] = "dBFS"

    def __init__(self, params: TurnParams, rate: int) -> None:
        self.window = rate // 100  # 10 ms: fine enough for onsets, coarse enough to be cheap
        self.start_db = params.start_db
        self.stop_db = params.stop_db
        self.margin_db = params.noise_margin_db
        self.floor = NoiseFloor(self.window / rate) if self.margin_db > 0 else None

    def score(self, windows: np.ndarray, level_db: np.ndarray) -> tuple[list[float], list[bool], list[bool]]:
        levels = level_db.tolist()  # a frame holds 1-3 windows: Python compares them faster than numpy
        if self.floor is None:
            return levels, [v >= self.start_db for v in levels], [v >= self.stop_db for v in levels]
        starts: list[bool] = []
        stays: list[bool] = []
        hyst = self.start_db - self.stop_db
        for v in levels:
            f = self.floor
            start_at = max(self.start_db, f.floor_db + self.margin_db)  # the floor before this window
            f.push(v)
            starts.append(v >= start_at and f.smoothed_db >= start_at)
            stays.append(f.smoothed_db >= max(self.stop_db, start_at - hyst))
        return levels, starts, stays

    def start_reason(self, score: float, level_db: float, speech_ms: float) -> str:
        if self.floor is not None:
            return (f"level {level_db:.1f} dBFS >= max({self.start_db:g}, noise floor {self.floor.floor_db:.1f} + "
                    f"{self.margin_db:g}) for {speech_ms:.0f} ms")
        return f"level {level_db:.1f} dBFS >= {self.start_db:g} for {speech_ms:.0f} ms"


class WebrtcvadScorer:
    """WebRTC's VAD (webrtcvad-wheels): robust to steady noise, binary, no probability."""

    name: ClassVar[str] = "webrtcvad"
    unit: ClassVar[str] = "speech flag (0/1)"

    def __init__(self, params: TurnParams, rate: int) -> None:
        import webrtcvad

        if rate not in (8000, 16000, 32000, 48000):
            raise ValueError(f"webrtcvad needs a rate of 8, 16, 32 or 48 kHz, got {rate}")
        self.window = rate * params.webrtcvad_frame_ms // 1000
        self.rate = rate
        self.mode = params.webrtcvad_mode
        self._vad = webrtcvad.Vad(params.webrtcvad_mode)

    def score(self, windows: np.ndarray, level_db: np.ndarray) -> tuple[list[float], list[bool], list[bool]]:
        pcm = np.clip(windows * 32768.0, -32768, 32767).astype("<i2")
        flags = [self._vad.is_speech(row.tobytes(), self.rate) for row in pcm]
        return [1.0 if f else 0.0 for f in flags], flags, flags

    def start_reason(self, score: float, level_db: float, speech_ms: float) -> str:
        return f"webrtcvad (mode {self.mode}) speech for {speech_ms:.0f} ms, level {level_db:.1f} dBFS"


def silero_model_path() -> Path | None:
    """Where ``silero_vad.onnx`` is: $WORKBENCH_SILERO_ONNX, else inside the installed silero-vad wheel."""
    env = os.environ.get(SILERO_ENV)
    if env:
        return Path(env) if Path(env).is_file() else None
    # find_spec does not import the package, whose __init__ imports torch.
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "data" / "silero_vad.onnx"
        if p.is_file():
            return p
    return None


@lru_cache(maxsize=2)
def _silero_session(path: str):  # noqa: ANN202 - onnxruntime type is optional at import time
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # One thread: the model is tiny and the bridge shares its core with the event loop.
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


class SileroScorer:
    """Silero VAD through onnxruntime; stateful (LSTM state + 64-sample context) per detector."""

    name: ClassVar[str] = "silero"
    unit: ClassVar[str] = "speech probability (0..1)"
    _CONTEXT = 64

    def __init__(self, params: TurnParams, rate: int) -> None:
        if rate != 16000:
            raise ValueError(f"the silero scorer runs at 16000 Hz, got {rate}")
        path = silero_model_path()
        if path is None:
            raise RuntimeError(
                "scorer 'silero' needs silero_vad.onnx: `pip install --no-deps silero-vad` "
                f"or set {SILERO_ENV} to the file"
            )
        self._sess = _silero_session(str(path))
        self.window = 512
        self.threshold = params.silero_threshold
        self.neg_threshold = params.silero_neg_threshold
        self._state = np.zeros((2, 1, 128), np.float32)
        self._context = np.zeros((1, self._CONTEXT), np.float32)
        self._sr = np.array(rate, dtype=np.int64)

    def score(self, windows: np.ndarray, level_db: np.ndarray) -> tuple[list[float], list[bool], list[bool]]:
        probs: list[float] = []
        for row in windows:
            x = np.concatenate([self._context, row[None, :]], axis=1)
            out, self._state = self._sess.run(None, {"input": x, "state": self._state, "sr": self._sr})
            self._context = x[:, -self._CONTEXT :]
            probs.append(float(out[0, 0]))
        return probs, [p >= self.threshold for p in probs], [p >= self.neg_threshold for p in probs]

    def start_reason(self, score: float, level_db: float, speech_ms: float) -> str:
        return f"silero p={score:.2f} >= {self.threshold:g} for {speech_ms:.0f} ms, level {level_db:.1f} dBFS"


_SCORERS: dict[str, type] = {"energy": EnergyScorer, "webrtcvad": WebrtcvadScorer, "silero": SileroScorer}


def make_scorer(params: TurnParams, rate: int = 16000) -> Scorer:
    """Build the scorer ``params.scorer`` names, configured from ``params``."""
    try:
        cls = _SCORERS[params.scorer]
    except KeyError:
        names = ", ".join(SCORER_NAMES)
        raise ValueError(f"unknown scorer {params.scorer!r}; choose one of {names}") from None
    return cls(params, rate)
