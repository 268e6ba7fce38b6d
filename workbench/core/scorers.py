"""Pluggable speech scorers for the turn detector, selected by name.

A scorer looks at fixed windows of 16 kHz mono float32 samples (full scale = 1.0)
and says, per window, whether the window may *enter* speech (``start``) and
whether it may *stay* in speech (``stay``).  Two flags give every scorer its own
hysteresis while the turn logic stays the same.  Units of ``score``:

- ``energy``: window RMS in dBFS (the level itself); start at ``start_db``, stay at ``stop_db``.
  With ``noise_margin_db`` > 0 the thresholds also rise above an adaptive noise floor (see
  ``NoiseFloor``): start at ``max(start_db, floor + noise_margin_db)``, stay that less
  ``start_db - stop_db``, judged on a 50 ms smoothed level, so a steady background at 15 dB SNR
  neither holds every turn open nor starts one.  The score is then the floor each window was judged against.
- ``webrtcvad``: 1.0 speech / 0.0 not speech from WebRTC's GMM VAD (``webrtcvad_mode`` 0-3,
  windows of ``webrtcvad_frame_ms``); start = stay = the VAD's answer.
- ``silero``: speech probability 0..1 from Silero VAD v5/v6 (ONNX, 512-sample windows = 32 ms),
  start at ``silero_threshold``, stay at ``silero_neg_threshold``.  The core never opens the model file: a shell
  (``workbench.store.models``) finds ``silero_vad.onnx``, loads the onnxruntime session and hands the scorer an
  ``infer`` callable, either directly (``make_scorer(..., silero_infer=...)``) or through ``MODEL_LOADERS``.

Contract of ``score``: the whole batch of windows at once (a live frame's 1-3 windows or a file's minutes), in
media order, each window exactly once; it returns (score, start, stay), one row per window, as numpy arrays (or
lists, for a few windows).  Energy
scores are plain numpy over the batch; the stateful scorers (the noise floor, webrtcvad, Silero's LSTM) walk the
rows in order.  Each scorer class validates its own settings (``validate``), called from ``TurnParams.validate``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from workbench.core.pcm import SENT_RATE

if TYPE_CHECKING:
    from workbench.core.params import TurnParams

SCORER_NAMES = ("energy", "webrtcvad", "silero")
# (x (1, 64 + 512) float32, state (2, 1, 128) float32, sr int64) -> (probability (1, 1), new state)
SileroInfer = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
# Shells register how to load a model a scorer needs (name -> loader returning the callable); see workbench.store.
MODEL_LOADERS: dict[str, Callable[[], Any]] = {}


def check_range(params: Any, name: str, lo: float, hi: float, what: str) -> None:
    """Raise ValueError unless ``params.<name>`` is a finite number in ``[lo, hi]``."""
    v = getattr(params, name)
    bad_type = isinstance(v, bool) or not isinstance(v, int | float)
    if bad_type or not math.isfinite(v) or not lo <= v <= hi:
        raise ValueError(f"TurnParams.{name} = {v!r} is out of range: {what}")


class Scorer(Protocol):
    name: ClassVar[str]
    unit: ClassVar[str]
    window: int  # samples per scored window

    def score(self, windows: np.ndarray, level_db: np.ndarray) -> tuple[Any, Any, Any]:
        """Score ``windows`` (n, window) float32 with their levels (n,) dBFS; (score, start, stay) per window,
        each a numpy array or (for a few windows) a list."""
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
    thresholds alone, stateless, so a whole file's windows are two numpy comparisons.
    """

    name: ClassVar[str] = "energy"
    unit: ClassVar[str] = "dBFS"

    @staticmethod
    def validate(params: TurnParams) -> None:
        check_range(params, "start_db", -120, 0, "must be between -120 and 0 dBFS")
        check_range(params, "stop_db", -120, params.start_db,
                    f"must be between -120 dBFS and start_db ({params.start_db:g})")
        check_range(params, "noise_margin_db", 0, 60, "must be between 0 (off) and 60 dB")

    def __init__(self, params: TurnParams, rate: int) -> None:
        self.window = rate // 100  # 10 ms: fine enough for onsets, coarse enough to be cheap
        self.start_db = params.start_db
        self.stop_db = params.stop_db
        self.margin_db = params.noise_margin_db
        self.floor = NoiseFloor(self.window / rate) if self.margin_db > 0 else None

    def score(self, windows: np.ndarray, level_db: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.floor is None:
            if level_db.shape[0] <= 8:  # a live frame's 1-3 windows: Python compares them faster than numpy
                levels = level_db.tolist()
                return levels, [v >= self.start_db for v in levels], [v >= self.stop_db for v in levels]
            return level_db, level_db >= self.start_db, level_db >= self.stop_db
        starts = np.zeros(level_db.shape[0], bool)
        stays = np.zeros(level_db.shape[0], bool)
        floors = np.zeros(level_db.shape[0])
        hyst = self.start_db - self.stop_db
        f = self.floor
        for i, v in enumerate(level_db.tolist()):
            floors[i] = f.floor_db  # the floor before this window
            start_at = max(self.start_db, f.floor_db + self.margin_db)
            f.push(v)
            starts[i] = v >= start_at and f.smoothed_db >= start_at
            stays[i] = f.smoothed_db >= max(self.stop_db, start_at - hyst)
        return floors, starts, stays  # the score is the noise floor each window was judged against

    def start_reason(self, score: float, level_db: float, speech_ms: float) -> str:
        if self.floor is not None:
            return (f"level {level_db:.1f} dBFS >= max({self.start_db:g}, noise floor {score:.1f} + "
                    f"{self.margin_db:g}) for {speech_ms:.0f} ms")
        return f"level {level_db:.1f} dBFS >= {self.start_db:g} for {speech_ms:.0f} ms"


class WebrtcvadScorer:
    """WebRTC's VAD (webrtcvad-wheels): robust to steady noise, binary, no probability."""

    name: ClassVar[str] = "webrtcvad"
    unit: ClassVar[str] = "speech flag (0/1)"

    @staticmethod
    def validate(params: TurnParams) -> None:
        if params.webrtcvad_mode not in (0, 1, 2, 3) or isinstance(params.webrtcvad_mode, bool):
            raise ValueError(f"TurnParams.webrtcvad_mode = {params.webrtcvad_mode!r} must be 0, 1, 2 or 3")
        if params.webrtcvad_frame_ms not in (10, 20, 30) or isinstance(params.webrtcvad_frame_ms, bool):
            raise ValueError(
                f"TurnParams.webrtcvad_frame_ms = {params.webrtcvad_frame_ms!r} must be 10, 20 or 30"
            )

    def __init__(self, params: TurnParams, rate: int) -> None:
        import webrtcvad

        if rate not in (8000, 16000, 32000, 48000):
            raise ValueError(f"webrtcvad needs a rate of 8, 16, 32 or 48 kHz, got {rate}")
        self.window = rate * params.webrtcvad_frame_ms // 1000
        self.rate = rate
        self.mode = params.webrtcvad_mode
        self._vad = webrtcvad.Vad(params.webrtcvad_mode)

    def score(self, windows: np.ndarray, level_db: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pcm = np.clip(windows * 32768.0, -32768, 32767).astype("<i2")
        flags = np.fromiter((self._vad.is_speech(row.tobytes(), self.rate) for row in pcm), bool, pcm.shape[0])
        return flags.astype(np.float64), flags, flags

    def start_reason(self, score: float, level_db: float, speech_ms: float) -> str:
        return f"webrtcvad (mode {self.mode}) speech for {speech_ms:.0f} ms, level {level_db:.1f} dBFS"


class SileroScorer:
    """Silero VAD through an ``infer`` callable a shell loaded; stateful (LSTM state + 64-sample context)."""

    name: ClassVar[str] = "silero"
    unit: ClassVar[str] = "speech probability (0..1)"
    _CONTEXT = 64

    @staticmethod
    def validate(params: TurnParams) -> None:
        check_range(params, "silero_threshold", 0.01, 0.99, "must be between 0.01 and 0.99")
        check_range(params, "silero_neg_threshold", 0.01, params.silero_threshold,
                    f"must be between 0.01 and silero_threshold ({params.silero_threshold:g})")

    def __init__(self, params: TurnParams, rate: int, infer: SileroInfer | None = None) -> None:
        if rate != SENT_RATE:
            raise ValueError(f"the silero scorer runs at {SENT_RATE} Hz, got {rate}")
        if infer is None:
            loader = MODEL_LOADERS.get("silero")
            if loader is None:
                raise RuntimeError("scorer 'silero' needs its model: pass silero_infer (workbench.store.models)")
            infer = loader()
        self._infer = infer
        self.window = 512
        self.threshold = params.silero_threshold
        self.neg_threshold = params.silero_neg_threshold
        self._state = np.zeros((2, 1, 128), np.float32)
        self._context = np.zeros((1, self._CONTEXT), np.float32)
        self._sr = np.array(rate, dtype=np.int64)

    def score(self, windows: np.ndarray, level_db: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        probs = np.zeros(windows.shape[0])
        for i, row in enumerate(windows):
            x = np.concatenate([self._context, row[None, :]], axis=1)
            out, self._state = self._infer(x, self._state, self._sr)
            self._context = x[:, -self._CONTEXT :]
            probs[i] = float(out[0, 0])
        return probs, probs >= self.threshold, probs >= self.neg_threshold

    def start_reason(self, score: float, level_db: float, speech_ms: float) -> str:
        return f"silero p={score:.2f} >= {self.threshold:g} for {speech_ms:.0f} ms, level {level_db:.1f} dBFS"


_SCORERS: dict[str, type] = {"energy": EnergyScorer, "webrtcvad": WebrtcvadScorer, "silero": SileroScorer}


def validate_settings(params: TurnParams, name: str) -> None:
    """The settings of scorer ``name`` in ``params`` (ValueError naming the first bad one)."""
    _SCORERS[name].validate(params)


def make_scorer(params: TurnParams, rate: int = SENT_RATE, *, silero_infer: SileroInfer | None = None) -> Scorer:
    """Build the scorer ``params.scorer`` names, configured from ``params``.

    ``silero_infer``: the loaded Silero model as a callable (default: the loader a shell registered in
    ``MODEL_LOADERS``; importing ``workbench`` registers ``workbench.store.models``'s).
    """
    try:
        cls = _SCORERS[params.scorer]
    except KeyError:
        names = ", ".join(SCORER_NAMES)
        raise ValueError(f"unknown scorer {params.scorer!r}; choose one of {names}") from None
    if cls is SileroScorer:
        return SileroScorer(params, rate, silero_infer)
    return cls(params, rate)
