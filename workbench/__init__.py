"""Gemini Live turn-taking workbench: bridge, emulator, recorder, replay and diagnosis."""

from __future__ import annotations

from typing import Any

from workbench.store import models as _models  # noqa: F401 - registers the model loaders the core's scorers ask for

__version__ = "0.1.0"
__all__ = ["Recording", "RecordingError", "load", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so `workbench --help` does not pay for pandas.
    if name in ("Recording", "RecordingError", "load"):
        from workbench.store import recording

        return getattr(recording, name)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
