"""Model files the scorers need, found and loaded here so the core never opens a file.

``silero_vad.onnx`` comes from ``$WORKBENCH_SILERO_ONNX`` or from inside the ``silero-vad`` wheel (installed with
``--no-deps``: no PyTorch; found without importing the package, whose ``__init__`` imports torch).  The session is
loaded once per process and handed to ``scorers.SileroScorer`` as an ``infer`` callable; importing ``workbench``
registers ``silero_infer`` in ``scorers.MODEL_LOADERS``, so ``TurnDetector(TurnParams(scorer="silero"))`` works.
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from workbench.core import scorers

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
