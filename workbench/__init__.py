"""Gemini Live turn-taking workbench."""

__version__ = "0.1.0"
