"""The shells: the only layer below the UI that runs an event loop or talks to the network.

Event loop choice, WebRTC tracks and media, the loop-side Opus decoder, ingest, the google-genai session (live),
the websocket tap, the bridge that carries out the cores' decisions, the naive bridges of the field report, and
``workbench.tap`` for recording a user's own bridge.
"""
