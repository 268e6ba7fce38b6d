"""The decisions, sans-I/O: events, turn parameters, scorers, turn detector, resampler, send order, ledger, mic
pipeline, the client's connection life and the end-of-turn policy.

Plain classes fed timestamps, frames and messages, returning typed decisions. Nothing here imports asyncio, aiortc,
google-genai, websockets or aiohttp, or opens files (tests/test_layers.py checks), so the same code runs live, in
replay, in sweeps and in tests.
"""
