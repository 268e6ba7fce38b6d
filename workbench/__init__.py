"""Gemini Live turn-taking workbench: bridge, emulator, recorder, replay and diagnosis."""

from .recording import Recording, RecordingError, load

__version__ = "0.1.0"
__all__ = ["Recording", "RecordingError", "load", "__version__"]
