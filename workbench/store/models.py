"""Model files the scorers and the end-of-turn policy need, found and loaded here so the core never opens a file.

``silero_vad.onnx`` comes from ``$WORKBENCH_SILERO_ONNX`` or from inside the ``silero-vad`` wheel (installed with
``--no-deps``: no PyTorch; found without importing the package, whose ``__init__`` imports torch).  The session is
loaded once per process and handed to ``scorers.SileroScorer`` as an ``infer`` callable; importing ``workbench``
registers ``silero_infer`` in ``scorers.MODEL_LOADERS``, so ``TurnDetector(TurnParams(scorer="silero"))`` works.
"""

from __future__ import annotations

import importlib.util
import os
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

from workbench.core import scorers
from workbench.core.endturn import END_MODEL_NAMES, last_window, log_mel

SILERO_ENV = "WORKBENCH_SILERO_ONNX"


class ModelFileMissing(ValueError):
    """A model file the chosen settings need is not installed; a ValueError, so the CLI prints it as one line."""


def silero_model_path() -> Path | None:
    """Where ``silero_vad.onnx`` is: $WORKBENCH_SILERO_ONNX, else inside the installed silero-vad wheel."""
    env = os.environ.get(SILERO_ENV)
    if env:
        return Path(env) if Path(env).is_file() else None
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "data" / "silero_vad.onnx"
        if p.is_file():
            return p
    return None


@lru_cache(maxsize=2)
def _silero_session(path: str):  # noqa: ANN202 - onnxruntime's type is optional at import time
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # One thread: the model is tiny and the bridge shares its core with the event loop.
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def silero_infer() -> scorers.SileroInfer:
    """The loaded Silero VAD as ``infer(x, state, sr) -> (probability, state)``; ``ModelFileMissing`` naming the fix."""
    path = silero_model_path()
    if path is None:
        raise ModelFileMissing("scorer 'silero' needs silero_vad.onnx: `pip install --no-deps silero-vad` "
                           f"or set {SILERO_ENV} to the file")
    sess = _silero_session(str(path))

    def infer(x: np.ndarray, state: np.ndarray, sr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out, new_state = sess.run(None, {"input": x, "state": state, "sr": sr})
        return out, new_state

    return infer


scorers.MODEL_LOADERS.setdefault("silero", silero_infer)


# Smart Turn v3.2: ``smart-turn-v3.2-cpu.onnx`` (BSD-2-Clause, Daily) ships inside pipecat-ai's wheel, installed
# with ``pip install --no-deps pipecat-ai`` (none of pipecat's dependencies); found without importing pipecat, or
# from ``$WORKBENCH_SMART_TURN_ONNX``.
SMART_TURN_ENV = "WORKBENCH_SMART_TURN_ONNX"


SMART_TURN_FILE = "smart-turn-v3.2-cpu.onnx"


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


@lru_cache(maxsize=4)
def _session(path: str, threads: int = 1):  # noqa: ANN202 - onnxruntime is imported lazily
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads  # default 1: the bridge shares its cores with the event loop
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


class SmartTurn:
    """``probability(audio)``: P(turn complete) for the turn's audio up to now (16 kHz float32)."""

    name = "smart-turn"

    def __init__(self, threads: int = 1) -> None:
        """``threads``: onnxruntime's intra-op threads (1 unless the model has a process to itself)."""
        path = smart_turn_path()
        if path is None:
            raise RuntimeError(
                f"end model 'smart-turn' needs {SMART_TURN_FILE}: `pip install --no-deps pipecat-ai` "
                f"or set {SMART_TURN_ENV} to the file"
            )
        self._sess = _session(str(path), threads)
        self.last_ms = 0.0  # wall time of the last call (features + inference), for the event log

    def probability(self, audio: np.ndarray) -> float:
        t0 = time.perf_counter()
        feats = log_mel(last_window(audio))[None, :, :]
        out = self._sess.run(None, {"input_features": feats})
        self.last_ms = (time.perf_counter() - t0) * 1000
        return float(np.asarray(out[0]).reshape(-1)[0])

    def probabilities(self, audios: list[np.ndarray]) -> list[float]:
        """Several turns at once: one onnxruntime run over a batch along axis 0 (every input is 8 s).

        A batch costs about the same CPU per score as one by one (bench/BENCHMARKS.md, "End-of-turn model and
        the event loop"), so the worker batches only when asked (``EndModelWorker(max_batch=...)``)."""
        feats = np.stack([log_mel(last_window(a)) for a in audios])
        out = self._sess.run(None, {"input_features": feats})
        return [float(v) for v in np.asarray(out[0]).reshape(len(audios), -1)[:, 0]]


def make_end_model(name: str, threads: int = 1) -> SmartTurn | None:
    """The end-of-turn model ``name`` names (``none`` -> None)."""
    if name == "none":
        return None
    if name == "smart-turn":
        return SmartTurn(threads)
    raise ValueError(f"unknown end model {name!r}; choose one of {', '.join(END_MODEL_NAMES)}")
