"""The notebooks as a user sees them: JupyterLab in headless Chromium, Run All, look at the page.

A real ``jupyter lab`` server (this interpreter's, ``--allow-root`` only when root) serves a temporary
copy of ``notebooks/`` with short-run parameters injected (as tests/test_notebooks.py does); headless
Chromium opens each notebook that needs no microphone and is driven over the Chrome DevTools Protocol
(a plain websocket; nothing is downloaded).  Per notebook: Run All, then no cell holds an error, every
notebook shows at least the figures it makes as loaded images on the page, and in 03 dragging the tuning
panel's ``silence_ms`` slider with the mouse redraws the panel's figure.  Screenshots of the first and
the last figure of each notebook go to the test's tmp dir (the path is printed).

04 runs two of its scenarios (``SCENARIOS`` injected: a field-report mistake and strict input; all
seventeen take minutes, mostly drawing 34 timelines); tests/test_notebooks.py runs six headless.
Left out: 05 (needs a browser microphone talking to ``serve``).
Skips when Chromium or JupyterLab is missing.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import chromium, end_group

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
# notebook: the figures it shows at least (04: two timelines per scenario)
CASES = {"01_live_session": 1, "02_replay_and_analyse": 3, "03_tune_vad": 3, "04_failure_modes": 4,
         "06_your_bridge": 2}
SCENARIOS = ["receive-once", "strict-input"]  # 04: 7.5 s of audio each, run at once
RUN_TIMEOUT_S = 120.0  # per notebook, Run All to idle
START_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _copy_notebooks(dest: Path, recordings: Path) -> None:
    """Copies of the notebooks with an ``injected-parameters`` cell after each ``parameters`` cell."""
    # SECONDS: the first answer (0.5-5.5 s) and its ActivityEnd; 02 zooms in on that turn of 01's recording
    values: dict[str, Any] = {"SECONDS": 7, "RECORDINGS_DIR": str(recordings), "USE_GEMINI": False, "JOBS": 2,
                              "SCENARIOS": SCENARIOS}
    for name in CASES:
        nb = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())
        for i, cell in enumerate(nb["cells"]):
            if cell["cell_type"] == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
                src = "".join(cell["source"])
                names = [k for k in values if any(line.startswith(f"{k} =") for line in src.splitlines())]
                nb["cells"].insert(i + 1, {"cell_type": "code", "execution_count": None, "id": f"injected{i}",
                                           "metadata": {"tags": ["injected-parameters"]}, "outputs": [],
                                           "source": "\n".join(f"{k} = {values[k]!r}" for k in names)})
                break
        (dest / f"{name}.ipynb").write_text(json.dumps(nb, indent=1))


class Cdp:
    """The least of the Chrome DevTools Protocol: send a command, wait for its answer (events are dropped)."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None, open_timeout=20).__enter__()
        self.ids = itertools.count(1)
        self.notebook = ""  # the path of the notebook the page scripts look at
        self.shots = Path(".")  # where a screenshot of a timed-out wait goes

    def call(self, method: str, timeout: float = 60.0, **params: Any) -> dict[str, Any]:
        n = next(self.ids)
        self.ws.send(json.dumps({"id": n, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.get("id") == n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expr: str, timeout: float = 60.0) -> Any:
        expr = expr.replace("PANEL", PANEL).replace("NOTEBOOK", json.dumps(self.notebook))
        r = self.call("Runtime.evaluate", timeout=timeout, expression=expr, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"page script failed: {r['exceptionDetails'].get('exception', r['exceptionDetails'])}")
        return r["result"].get("value")

    def wait_for(self, expr: str, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = self.js(expr)
            if v:
                return v
            time.sleep(0.2)
        shot = self.screenshot(self.shots / f"timeout-{Path(self.notebook).stem or 'lab'}.png")
        state = self.js("""(() => { const a = window.jupyterapp; const w = a && a.shell.currentWidget;
          return {app: !!a, widget: w ? w.constructor.name + ' ' + w.title.label : null,
                  dialog: (document.querySelector('.jp-Dialog') || {}).innerText || null}; })()""")
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; page {state}; screenshot {shot}")

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path

    def mouse(self, kind: str, x: float, y: float) -> None:
        self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", buttons=1 if kind != "mouseReleased"
                  else 0, clickCount=1)


# The notebook's panel, found by path (headless, nothing has focus, so shell.currentWidget may be unset).
PANEL = """(() => { const app = window.jupyterapp; if (!app) return null;
  const w = [...app.shell.widgets('main')].find(p => p.context && p.context.path === NOTEBOOK);
  if (w) app.shell.activateById(w.id); return w || null; })()"""
KERNEL_STATE = """(() => { const w = PANEL;
  if (!w || !w.sessionContext || !w.content) return null;
  const k = w.sessionContext.session && w.sessionContext.session.kernel;
  return k ? k.status : null; })()"""
CELLS = """(() => { const w = PANEL;
  return w.content.widgets.filter(c => c.model.type === 'code').map(c => ({
    count: c.model.executionCount,
    errors: c.model.outputs.toJSON().filter(o => o.output_type === 'error').map(o => o.ename + ': ' + o.evalue),
    busy: (c.node.querySelector('.jp-InputPrompt') || {}).textContent === '[*]:' })); })()"""
# The loaded figures; the WHICH one (0: first, -1: last) is scrolled to the top with the text just above it (04's
# scenario heading and run line).
IMAGES = """(() => { const w = PANEL;
  const imgs = [...w.content.node.querySelectorAll('.jp-OutputArea-output img')];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0);
  const img = ok.at(WHICH);
  if (img) {
    let top = img.closest('.jp-OutputArea-child') || img;
    for (let k = 0; k < 2; k++) {
      const prev = top.previousElementSibling;
      if (!prev || !prev.querySelector('.jp-RenderedMarkdown')) break;
      top = prev;
    }
    top.scrollIntoView({block: 'start'});
  }
  return ok.length; })()"""
SLIDER = """(() => { const w = PANEL;
  const label = [...w.content.node.querySelectorAll('.widget-slider .widget-label')]
    .find(l => l.textContent.trim() === 'silence_ms');
  if (!label) return null;
  const slider = label.closest('.widget-slider');
  let box = slider; while (box && !box.querySelector('img')) box = box.parentElement;
  slider.scrollIntoView({block: 'center'});
  const h = slider.querySelector('.noUi-handle').getBoundingClientRect();
  const track = slider.querySelector('.noUi-target').getBoundingClientRect();
  if (SCROLL_TO_FIGURE) box.querySelector('img').scrollIntoView({block: 'center'});
  return {x: h.x + h.width / 2, y: h.y + h.height / 2, track: track.width,
          readout: slider.querySelector('.widget-readout').textContent, src: box.querySelector('img').src}; })()"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A JupyterLab server on a free port and one headless Chromium page connected to it over CDP."""
    binary = chromium()
    if binary is None:
        pytest.skip("no Chromium found (apt-get install -y chromium, or set WORKBENCH_CHROMIUM)")
    pytest.importorskip("jupyterlab")
    root = tmp_path_factory.mktemp("jupyterlab")
    print(f"\nJupyterLab test artefacts (screenshots, server log): {root}")
    nbdir, recordings = root / "notebooks", root / "recordings"
    nbdir.mkdir()
    recordings.mkdir()
    _copy_notebooks(nbdir, recordings)
    (root / "examples").symlink_to(REPO / "examples")  # 06 loads ../examples/, as from notebooks/ in the repo
    spec = root / "jupyter-path" / "kernels" / "python3"  # this interpreter's kernel, found first
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)", "language": "python"}))
    settings = root / "lab-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    # Every cell in the DOM (no windowing), so the page can be checked for the images of cells out of view.
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    apputils = root / "lab-settings" / "@jupyterlab" / "apputils-extension"
    apputils.mkdir(parents=True)  # no "get news?" toast over the page, no fetch from the network
    (apputils / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env.update({"PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                "JUPYTER_PATH": str(root / "jupyter-path"), "JUPYTER_CONFIG_DIR": str(root / "config"),
                "JUPYTER_RUNTIME_DIR": str(root / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(root / "lab-settings"),
                "JUPYTERLAB_WORKSPACES_DIR": str(root / "workspaces")})
    port, token = _free_port(), "workbench-test"
    argv = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={nbdir}",
            "--LabApp.expose_app_in_browser=True", "--ServerApp.port_retries=0"]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    log = (root / "jupyter.log").open("wb")
    server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=nbdir,
                              start_new_session=True)
    profile = root / "chromium-profile"
    browser = None
    try:
        # Chromium starts while JupyterLab does (both take seconds on a loaded machine).
        browser = subprocess.Popen([
            binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "--window-size=1400,1000",
            "--remote-debugging-port=0", "--remote-allow-origins=*", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not start: {(root / 'jupyter.log').read_text()[-2000:]}")
                time.sleep(0.3)
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (active.exists() and active.read_text().strip()):
            if browser.poll() is not None or time.monotonic() > deadline:
                pytest.fail("Chromium did not open its DevTools port")
            time.sleep(0.2)
        cdp_port = int(active.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{cdp_port}/json/list", timeout=5) as r:
            page = next(t for t in json.loads(r.read()) if t["type"] == "page")
        cdp = Cdp(page["webSocketDebuggerUrl"])
        cdp.shots = root
        cdp.call("Page.navigate", url=f"http://127.0.0.1:{port}/lab?token={token}&reset")
        cdp.wait_for("!!(window.jupyterapp && window.jupyterapp.shell)", START_TIMEOUT_S, "JupyterLab to load")
        cdp.js("window.jupyterapp.restored.then(() => true)", timeout=START_TIMEOUT_S)
        yield {"cdp": cdp, "url": f"http://127.0.0.1:{port}", "token": token, "root": root}
        cdp.ws.close()
    finally:
        if browser is not None:
            end_group(browser, 10)
        end_group(server, 10)
        log.close()


def _open_and_run_all(lab: dict[str, Any], name: str) -> list[dict[str, Any]]:
    cdp: Cdp = lab["cdp"]
    cdp.notebook = f"{name}.ipynb"
    t_open = time.monotonic()
    # Opened from the running app, not by loading a new page: after the slider drag (a user gesture) leaving
    # the page would stop on Chrome's "leave site?" prompt.
    cdp.js(f"window.jupyterapp.commands.execute('docmanager:open', "
           f"{{path: {json.dumps(cdp.notebook)}, factory: 'Notebook'}}).then(() => true)")
    cdp.wait_for(f"(() => {{ const s = {KERNEL_STATE}; return s === 'idle'; }})()", START_TIMEOUT_S,
                 f"{name}: notebook open with an idle kernel")
    t0 = time.monotonic()
    print(f"{name}: open {t0 - t_open:.1f} s")
    cdp.js("(() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); return true; })()")
    cells = cdp.wait_for(f"""(() => {{ const cells = {CELLS}; const s = {KERNEL_STATE};
        const done = s === 'idle' && !cells.some(c => c.busy)
          && (cells.every(c => c.count !== null) || cells.some(c => c.errors.length));
        return done ? cells : null; }})()""", RUN_TIMEOUT_S, f"{name}: Run All to finish")
    print(f"{name}: Run All {time.monotonic() - t0:.1f} s")
    return cells


@pytest.mark.timeout(300)  # the first one also starts JupyterLab and Chromium
@pytest.mark.parametrize("name", list(CASES))
def test_notebook_runs_in_jupyterlab(lab: dict[str, Any], name: str) -> None:
    cdp: Cdp = lab["cdp"]
    try:
        _check_notebook(lab, name)
    finally:  # one kernel at a time on a shared machine
        cdp.js("(() => { const w = PANEL; if (w) w.sessionContext.shutdown().then(() => w.dispose()); "
               "return true; })()")  # dispose: closed without the "save changes?" dialog


def _check_notebook(lab: dict[str, Any], name: str) -> None:
    cdp: Cdp = lab["cdp"]
    cells = _open_and_run_all(lab, name)
    shot = lab["root"] / f"{name}.png"
    errors = [(i, c["errors"]) for i, c in enumerate(cells) if c["errors"]]
    not_run = [i for i, c in enumerate(cells) if c["count"] is None]
    images = cdp.js(IMAGES.replace("WHICH", "0"))
    time.sleep(0.3)  # the scroll to the first figure settles
    cdp.screenshot(shot)
    if images > 1:  # and the last one (03: the trade-off plot, 04: the last scenario's fixed run)
        cdp.js(IMAGES.replace("WHICH", "-1"))
        time.sleep(0.3)
        cdp.screenshot(lab["root"] / f"{name}-last.png")
    print(f"{name}: {images} figure(s); screenshots {shot}, {name}-last.png")
    assert not errors, f"{name}: cells with errors (code cells counted from 0): {errors}"
    assert not not_run, f"{name}: code cells not run: {not_run}"
    assert images >= CASES[name], f"{name}: {images} figure(s) on the page, {CASES[name]} expected"
    if name == "03_tune_vad":
        _drag_silence_slider(lab)


def _drag_silence_slider(lab: dict[str, Any]) -> None:
    """Drag the handle with the mouse; the slider only reports on release (continuous_update=False)."""
    cdp: Cdp = lab["cdp"]
    before = cdp.wait_for(SLIDER.replace("SCROLL_TO_FIGURE", "false"), 10, "the tuning panel's silence_ms slider")
    x, y = before["x"], before["y"]
    cdp.mouse("mouseMoved", x, y)
    cdp.mouse("mousePressed", x, y)
    dx = before["track"] * 0.15
    for k in range(1, 6):
        cdp.mouse("mouseMoved", x + dx * k / 5, y)
    cdp.mouse("mouseReleased", x + dx, y)
    changed = f"s && s.src !== {json.dumps(before['src'])} ? s : null"
    after = cdp.wait_for(f"(() => {{ const s = {SLIDER.replace('SCROLL_TO_FIGURE', 'true')}; return {changed}; }})()",
                         30, "the tuning panel's figure to be redrawn after the drag")
    shot = cdp.screenshot(lab["root"] / "03_tune_vad-after-drag.png")
    print(f"03_tune_vad: slider {before['readout']} -> {after['readout']}; screenshot {shot}")
    assert after["readout"] != before["readout"]
