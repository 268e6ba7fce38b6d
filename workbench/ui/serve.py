"""``workbench serve``: a web page that bridges a real browser's microphone into a recorded Live session.

The server itself is ``workbench.ui.web.server`` (imported only when a server starts, so ``workbench
--help`` stays fast).  Notebooks use ``start_in_background`` and ``live_timeline``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any

from workbench.io import eventloop


def register(subparsers: Any) -> None:
    """Add ``workbench serve``."""
    from workbench.ui.cli import add_api_key_arg

    p = subparsers.add_parser(
        "serve", help="serve a web page that bridges a real browser's microphone (WebRTC) into a Live session",
        description="Start a local web server: its page takes the microphone, connects to the bridge over WebRTC, "
                    "shows turn state and transcripts as they happen and plays the agent back. Each browser "
                    "session is recorded into OUT_DIR/browser-<time>-<n>/. Page options by query: autostart=1, "
                    "dtx=1, mute_at=S, unmute_at=S, mute_mode=enabled|replace, stop_after=S.",
        epilog="example: workbench serve --port 8080, then open http://127.0.0.1:8080/?dtx=1")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default %(default)s; 0: any)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--base-url", help="a Live endpoint instead of the embedded emulator (https://host:port)")
    where.add_argument("--live", action="store_true", help="use real Gemini (needs GEMINI_API_KEY)")
    add_api_key_arg(p)
    p.add_argument("--out-dir", type=Path, default=Path("recordings"), help="where recordings go (default %(default)s)")
    p.add_argument("--params", type=Path, help="turn-detector parameters as JSON")
    p.add_argument("--reply-s", type=float, default=1.0, help="emulator: length of each spoken answer, s")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from workbench.core.params import TurnParams
    from workbench.store.paramfile import read_params
    from workbench.ui.cli import UsageError, api_key_from
    from workbench.ui.web.server import ServeConfig, Server

    api_key = api_key_from(args)
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {args.port}")
    params = read_params(args.params) if args.params else TurnParams()
    config = ServeConfig(out_dir=args.out_dir, base_url=args.base_url, live=args.live, params=params,
                         reply_s=args.reply_s, host=args.host, port=args.port, api_key=api_key)

    async def go() -> None:
        server = Server(config)
        try:
            await server.start()
        except OSError as exc:
            raise UsageError(f"cannot listen on {config.host}:{config.port}: {exc.strerror}") from None
        print(f"workbench serve: open {server.url} (recordings: {config.out_dir}, /recordings to list them)",
              flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()

    with contextlib.suppress(KeyboardInterrupt):
        eventloop.run(go())
    return 0


# -- notebooks ----------------------------------------------------------------------------------


class ServerHandle:
    """A server running in its own thread and event loop (works the same in a notebook or a script)."""

    def __init__(self, config: Any) -> None:
        from workbench.ui.web.server import Server

        self.loop = eventloop.new_event_loop()
        self.server = Server(config)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="workbench-serve", daemon=True)
        self.thread.start()
        self._ready.wait(30.0)
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.start())
        except BaseException as exc:  # handed to the caller's thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    @property
    def url(self) -> str:
        return self.server.url

    def status(self) -> dict[str, Any]:
        """What ``/status`` serves."""
        async def get() -> dict[str, Any]:
            return json.loads((await self.server.status(None)).text)  # type: ignore[arg-type]

        return asyncio.run_coroutine_threadsafe(get(), self.loop).result(5.0)

    def current_recording(self) -> Path | None:
        """The directory of the newest browser session, running or ended."""
        sessions = list(self.server.sessions.values())
        return sessions[-1].dir if sessions else None

    def stop(self) -> None:
        if not self.loop.is_running():
            return
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5.0)

    def __repr__(self) -> str:
        return f"<workbench server at {self.url}, {len(self.server.sessions)} session(s)>"


def start_in_background(port: int = 0, *, out_dir: str | Path = "recordings", base_url: str | None = None,
                        use_gemini: bool = False, params: Any = None) -> ServerHandle:
    """Start ``workbench serve`` in a background thread and return at once with a handle (``.url``, ``.stop()``)."""
    from workbench.core.params import TurnParams
    from workbench.ui.web.server import ServeConfig

    return ServerHandle(ServeConfig(out_dir=Path(out_dir), base_url=base_url, live=use_gemini,
                                    params=params or TurnParams(), port=port))


def live_timeline(handle: ServerHandle, *, period_s: float = 1.0, duration_s: float | None = None,
                  window_s: float = 20.0) -> tuple[Any, asyncio.Task[None]]:
    """An ipywidgets Output redrawing the current session's timeline every ``period_s``.

    Returns ``(output, task)``: display the output; the task (in the notebook's own loop, so the
    cell returns at once) runs for ``duration_s`` (None: until cancelled).  It shows the last
    ``window_s`` seconds of the session in progress, or says it is waiting for a browser.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    out = widgets.Output()

    def draw() -> None:
        path = handle.current_recording()
        with out:
            out.clear_output(wait=True)
            if path is None or not (path / "events.jsonl").exists():
                print(f"{handle.url}: listening, no browser session yet")
                return
            from workbench.store.recording import load
            from workbench.ui.plots import timeline

            rec = load(path)
            t_end = float(rec.events["t"].max()) if len(rec.events) else 0.0
            fig = timeline(rec, t_range=(max(0.0, t_end - window_s), max(t_end, 1.0)), title=path.name)
            display(fig)
            plt.close(fig)

    async def refresh() -> None:
        t_stop = None if duration_s is None else time.monotonic() + duration_s
        while t_stop is None or time.monotonic() < t_stop:
            draw()
            await asyncio.sleep(period_s)

    return out, asyncio.ensure_future(refresh())
