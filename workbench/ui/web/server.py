"""The server behind ``workbench serve``: a local web page that talks to the bridge from a real browser.

The page (``workbench/ui/web/``) takes the microphone, negotiates a WebRTC connection with ``POST
/offer`` and hands its audio track to ``bridge.run_session``, which records it like any other
session into ``<out-dir>/browser-<time>-<n>/``.  The session's events go back to the page on the
data channel the page opens (``events``), and the model's 24 kHz audio goes back resampled to
48 kHz on an outgoing aiortc track.  ``/recordings`` lists what was recorded, ``/status`` is JSON
for tests and notebooks.

The page joins the microphone only when the bridge opens it (after the greeting), so frames do
not pile up in aiortc's receive queue while the agent greets.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import ipaddress
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from workbench.core.events import Event
from workbench.core.params import TurnParams
from workbench.io import bridge, live
from workbench.io.endmodel import EndModelWorker
from workbench.io.loopdecode import decode_audio_on_loop
from workbench.io.media import HangupTrack, ModelAudioTrack
from workbench.io.webrtc import _config, patch_aioice_loopback, send_audio_on_loop

WEB = Path(__file__).resolve().parent
# Events the page does not need (one per 20 ms frame, or per 100 ms sample).
QUIET_KINDS = ("frame", "loop_lag")
OPUS = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType.lower() == "audio/opus"]


# -- observing a session --------------------------------------------------------------------------


@dataclass
class BrowserSession:
    """One browser connection and the recorded session it feeds."""

    id: str
    name: str
    dir: Path
    pc: RTCPeerConnection
    voice: ModelAudioTrack
    options: dict[str, Any]
    state: str = "connecting"
    mic: HangupTrack | None = None
    channel: Any = None
    task: asyncio.Task[Any] | None = None
    counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    result: bridge.SessionResult | None = None
    backlog: list[str] = field(default_factory=list)
    page: list[dict[str, Any]] = field(default_factory=list)  # what the page reported doing (mute, unmute)
    browser_stats: dict[str, Any] = field(default_factory=dict)  # the page's latest WebRTC getStats summary

    # The observer interface (what a Recorder sees): events and the model's audio.
    def event(self, e: Event) -> None:
        if getattr(e, "stage", "app") == "app":  # a message once, not again as it crosses the socket
            name = getattr(e, "msg", None) or getattr(e, "decision", None) or getattr(e, "what", None)
            key = f"{e.kind}:{name}" if e.kind in ("send", "server", "vad", "session") else e.kind
            self.counts[key] = self.counts.get(key, 0) + 1
        if _interrupts(e):
            self.voice.clear()
        if e.kind == "session" and getattr(e, "what", "") == "mic_open":
            self.state = "mic_open"
        if e.kind in QUIET_KINDS or (e.kind == "send" and getattr(e, "stage", "") == "wire"):
            return
        if e.kind == "server" and getattr(e, "stage", "") == "wire":
            return
        self.send(e.to_dict())

    def model_audio(self, samples24k: np.ndarray) -> None:
        self.voice.push(samples24k)

    def send(self, payload: dict[str, Any]) -> None:
        text = json.dumps(payload, separators=(",", ":"), default=str)
        if self.channel is not None and self.channel.readyState == "open":
            self.channel.send(text)
        else:
            self.backlog.append(text)

    def flush_backlog(self) -> None:
        for text in self.backlog:
            self.channel.send(text)
        self.backlog.clear()

    def status(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "dir": str(self.dir), "state": self.state,
                "options": self.options, "page": list(self.page), "browser_stats": self.browser_stats,
                "counts": dict(self.counts), "error": self.error,
                "activities": None if self.result is None else self.result.activities,
                "answered": None if self.result is None else self.result.answered}


def _interrupts(e: Event) -> bool:
    """The old answer must stop playing: the server said ``interrupted``, or the bridge's client core decided the
    answer was interrupted (``Client`` action ``interrupted``, e.g. on barge-in)."""
    return (e.kind == "server" and getattr(e, "msg", "") == "interrupted") or (
        e.kind == "client" and getattr(e, "action", "") == "interrupted")


async def _run_observed(session: BrowserSession, source: MediaStreamTrack, cfg: bridge.SessionConfig,
                        end_model: EndModelWorker | None) -> bridge.SessionResult:
    return await bridge.run_session(source, cfg, session.dir, observer=session, end_model=end_model)


# -- the server -------------------------------------------------------------------------------------


@dataclass
class ServeConfig:
    out_dir: Path = Path("recordings")
    base_url: str | None = None  # None and not live: the embedded emulator
    live: bool = False
    params: TurnParams = field(default_factory=TurnParams)
    reply_s: float = 1.0
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = field(default=None, repr=False)  # named with --api-key-env; see live.api_key_for


class Server:
    """The aiohttp application and the sessions it runs; ``start()``/``stop()`` in a running loop."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.sessions: dict[str, BrowserSession] = {}
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self._count = 0
        self.end_model: EndModelWorker | None = None  # one for every browser session, closed by stop()
        app = web.Application()
        app.add_routes([
            web.get("/", self.index),
            web.get("/app.js", self.static),
            web.get("/recordings", self.recordings),
            web.get("/recordings/{name}/timeline.png", self.timeline),
            web.get("/recordings/{name}/turns", self.turns),
            web.get("/status", self.status),
            web.post("/offer", self.offer),
        ])
        self.app = app

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}/"

    async def start(self) -> None:
        patch_aioice_loopback()
        self.config.out_dir.mkdir(parents=True, exist_ok=True)
        if self.config.params.end_model != "none":
            self.end_model = await asyncio.to_thread(EndModelWorker, self.config.params.end_model)
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.config.host, self.config.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        for s in list(self.sessions.values()):
            if s.mic is not None:
                s.mic.hangup()
        tasks = [s.task for s in self.sessions.values() if s.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=15.0)
        for s in self.sessions.values():
            await s.pc.close()
        if self.runner is not None:
            await self.runner.cleanup()
        if self.end_model is not None:
            await asyncio.to_thread(self.end_model.close)
            self.end_model = None

    @property
    def endpoint(self) -> str:
        """``emulator`` (one embedded emulator per browser session), ``gemini`` or the base URL."""
        return "gemini" if self.config.live else (self.config.base_url or "emulator")

    # -- pages --
    async def index(self, _request: web.Request) -> web.StreamResponse:
        return web.FileResponse(WEB / "index.html")

    async def static(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(WEB / request.path.lstrip("/"))

    async def status(self, _request: web.Request) -> web.Response:
        return web.json_response({
            "listening": True, "url": self.url, "out_dir": str(self.config.out_dir),
            "endpoint": self.endpoint,
            "sessions": [s.status() for s in self.sessions.values()],
        })

    def _recording(self, name: str) -> Path:
        path = (self.config.out_dir / name).resolve()
        if path.parent != self.config.out_dir.resolve() or not (path / "events.jsonl").is_file():
            raise web.HTTPNotFound(text=f"no recording {name!r}")
        return path

    async def recordings(self, _request: web.Request) -> web.Response:
        rows = []
        dirs = [p for p in self.config.out_dir.iterdir() if (p / "events.jsonl").is_file()]
        for p in sorted(dirs, key=lambda p: p.stat().st_mtime, reverse=True):
            try:
                meta = json.loads((p / "session.json").read_text())
            except (OSError, ValueError):
                meta = {}
            n = html.escape(p.name)
            state = "cut short" if not meta.get("ended") else (meta.get("error") or "ended")
            rows.append(f"<tr><td>{n}</td><td>{html.escape(str(meta.get('start_wall_iso', '')))}</td>"
                        f"<td>{meta.get('activities', '')}</td><td>{meta.get('turn_completes', '')}</td>"
                        f"<td>{html.escape(str(state))}</td><td><a href='/recordings/{n}/timeline.png'>timeline</a> "
                        f"<a href='/recordings/{n}/turns'>turns</a></td></tr>")
        body = ("<!doctype html><meta charset=utf-8><title>Recordings</title>"
                "<style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:left}</style>"
                f"<p><a href='/'>session page</a></p><h1>Recordings in {html.escape(str(self.config.out_dir))}</h1>"
                "<table><tr><th>recording</th><th>started</th><th>activities</th><th>turn_completes</th>"
                "<th>state</th><th></th></tr>" + "".join(rows) + "</table>")
        return web.Response(text=body, content_type="text/html")

    async def timeline(self, request: web.Request) -> web.StreamResponse:
        path = self._recording(request.match_info["name"])
        png = path / "timeline.png"
        if not png.exists() or png.stat().st_mtime < (path / "session.json").stat().st_mtime:
            await asyncio.get_running_loop().run_in_executor(None, _draw_timeline, path, png)
        return web.FileResponse(png)

    async def turns(self, request: web.Request) -> web.Response:
        path = self._recording(request.match_info["name"])
        table = await asyncio.get_running_loop().run_in_executor(None, _turn_table_html, path)
        return web.Response(text=f"<!doctype html><meta charset=utf-8><title>{html.escape(path.name)}</title>"
                                 f"<p><a href='/recordings'>recordings</a></p><h1>{html.escape(path.name)}</h1>"
                                 + table, content_type="text/html")

    # -- signalling --
    def check_own_page(self, request: web.Request) -> None:
        """403 unless the request is a JSON POST from this server's own page.

        Any web site the user visits can make the browser POST to 127.0.0.1; an offer starts a session on the
        user's key.  A cross-site page can send only "simple" requests without a CORS preflight (text/plain,
        form types), and this server answers no preflight, so ``application/json`` alone keeps other sites'
        pages out; the Origin check also refuses what a browser did send from elsewhere.  Browsers send Origin
        on every POST, so a request without one is not from the page.  DNS rebinding (an attacker's name
        resolving to 127.0.0.1) would make Origin match Host; so Host must be an IP address, ``localhost`` or
        the configured ``--host``, never another name.
        """
        if request.content_type != "application/json":
            raise web.HTTPForbidden(text="POST /offer takes application/json from this server's own page")
        host = request.host
        origin = request.headers.get("Origin")
        if origin is None or origin != f"http://{host}":
            raise web.HTTPForbidden(text="POST /offer is accepted only from this server's own page (Origin)")
        name = request.url.host or ""
        try:
            ipaddress.ip_address(name)
        except ValueError:
            if name.lower() not in ("localhost", self.config.host.lower()):
                raise web.HTTPForbidden(text=f"POST /offer: host {name!r} is not this machine's address") from None

    async def offer(self, request: web.Request) -> web.Response:
        self.check_own_page(request)
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="expected JSON {sdp, type: 'offer'}") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="expected {sdp, type: 'offer'}")
        if body.get("type") != "offer" or not isinstance(body.get("sdp"), str):
            raise web.HTTPBadRequest(text="expected {sdp, type: 'offer'}")
        self._count += 1
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"browser-{stamp}-{self._count}"  # the counter: offers in the same second get their own dir
        pc = RTCPeerConnection(_config())
        s = BrowserSession(id=str(self._count), name=name, dir=self.config.out_dir / name, pc=pc,
                           voice=ModelAudioTrack(), options=dict(body.get("options") or {}))
        self.sessions[s.id] = s

        @pc.on("datachannel")
        def _channel(channel: Any) -> None:
            s.channel = channel

            @channel.on("open")
            def _open() -> None:
                s.flush_backlog()

            @channel.on("message")
            def _message(message: Any) -> None:
                if message == "hangup" and s.mic is not None:
                    s.mic.hangup()
                elif isinstance(message, str) and message.startswith("{"):
                    with contextlib.suppress(ValueError):
                        report = json.loads(message)
                        if report.get("page") == "stats":
                            s.browser_stats = report
                        else:
                            s.page.append({"t_wall": round(time.time(), 3), **report})

            if channel.readyState == "open":
                s.flush_backlog()

        @pc.on("track")
        def _track(track: MediaStreamTrack) -> None:
            if track.kind == "audio" and s.mic is None:
                s.mic = HangupTrack(track)

        @pc.on("connectionstatechange")
        async def _state() -> None:
            if pc.connectionState in ("failed", "closed") and s.mic is not None:
                s.mic.hangup()

        await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="offer"))
        decode_audio_on_loop(pc)  # the browser's Opus decoded on the loop, not on a thread per session
        # onto the browser's audio transceiver: the agent's voice goes back on it, encoded on the loop, DTX in silence
        send_audio_on_loop(pc.addTrack(s.voice))
        for transceiver in pc.getTransceivers():  # Opus only: the bridge takes 48 kHz frames, G722 decodes to 16 kHz
            if transceiver.kind == "audio":
                transceiver.setCodecPreferences(OPUS)
        await pc.setLocalDescription(await pc.createAnswer())
        if s.mic is None:
            await pc.close()
            del self.sessions[s.id]
            raise web.HTTPBadRequest(text="the offer carries no audio from the browser")
        s.task = asyncio.create_task(self._session(s))
        return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type,
                                  "session": s.id, "name": s.name})

    async def _session(self, s: BrowserSession) -> None:
        settings = live.LiveSettings(base_url=None if self.config.live else self.config.base_url,
                                     api_key=self.config.api_key)
        cfg = bridge.SessionConfig(params=self.config.params, live=settings, name="browser",
                                   source=f"browser {json.dumps(s.options, sort_keys=True)}")
        assert s.mic is not None
        try:
            if self.endpoint != "emulator":
                s.result = await _run_observed(s, s.mic, cfg, self.end_model)
            else:  # its own emulator, so emulator.jsonl holds this session only
                from workbench.emulator import Emulator, EmulatorConfig

                async with Emulator(EmulatorConfig(reply_s=self.config.reply_s)) as emu:  # the real profile
                    settings.base_url = emu.base_url
                    settings.ssl_context = emu.client_ssl_context()
                    s.result = await _run_observed(s, s.mic, cfg, self.end_model)
                emu.write_log(s.dir)
            s.error = s.result.error
        except Exception as exc:  # reported to the page and in /status
            s.error = f"{type(exc).__name__}: {exc}"
        finally:
            s.state = "ended"
            s.send({"kind": "ended", "error": s.error, "recording": s.name,
                    "activities": s.result.activities if s.result else None,
                    "answered": s.result.answered if s.result else None})
            await asyncio.sleep(0.5)  # let the last message and the last words reach the page
            await s.pc.close()


def _draw_timeline(path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from workbench.ui.plots import save_timeline

    save_timeline(path, png)
    plt.close("all")


def _turn_table_html(path: Path) -> str:
    from workbench.analysis.tables import turn_table
    from workbench.store.recording import load

    return turn_table(load(path)).to_html(index=False, float_format=lambda x: f"{x:.2f}", na_rep="-")
