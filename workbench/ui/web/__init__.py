"""The browser page (``index.html``, ``app.js``) and its aiohttp/aiortc server (``server.py``)."""
