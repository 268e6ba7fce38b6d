"""Every notebook in notebooks/ runs headless, top to bottom, with short parameters.

Parameters are injected papermill-style: a cell after the ``parameters``-tagged cell overrides the
names that cell defines (only those, so a new notebook gets what applies to it).  The notebooks run
in the current interpreter, cwd ``notebooks/`` as in JupyterLab; executed copies go to tmp and the
committed notebooks are never written.  The pages ``make pages`` renders (notebooks/rendered/) are
checked against the notebooks and the code they run, by digest, without running anything.
"""

from __future__ import annotations

import ast
import json
import math
import re
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = REPO / "notebooks"
CELL_TIMEOUT_S = 300


def _parameter_names(cell: Any) -> set[str]:
    targets = [t for node in ast.parse(cell.source).body
               for t in (node.targets if isinstance(node, ast.Assign) else
                         [node.target] if isinstance(node, ast.AnnAssign) else [])]
    return {t.id for t in targets if isinstance(t, ast.Name)}


def _overrides(shared: Path) -> dict[str, Any]:
    """Short-run values for every parameter name a notebook may define."""
    return {
        "SECONDS": 10,  # one full answer and the start of the next
        "RECORDINGS_DIR": str(shared),  # 01 writes here, 02 reads its recording from here
        "USE_GEMINI": False,
        "JOBS": 2,
        # 04: what the notebook shows for a field-report mistake and for a behaviour of the real service (all 17
        # take ~2.5 min here).  The scenarios' outcomes are asserted as sessions elsewhere: tests/ui/test_lab.py
        # (keepalive, latency spike, never answered, strict input), tests/e2e/test_recovery.py (barge-in, goAway
        # mid-answer), tests/e2e/test_diagnose_live.py (goAway by age, 16 s of audio: the longest here)
        "SCENARIOS": ["receive-once", "barge-in"],
    }


def _inject(nb: Any, values: dict[str, Any]) -> list[str]:
    """Add an ``injected-parameters`` cell after the ``parameters`` cell; returns the names set."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            names = sorted(_parameter_names(cell) & values.keys())
            source = "\n".join(f"{k} = {values[k]!r}" for k in names)
            new = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
            nb.cells.insert(i + 1, new)
            return names
    return []


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``python3`` kernelspec for this interpreter, found first whatever else is installed."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)", "language": "python",
    }))
    return root


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("notebook-recordings")


@pytest.mark.timeout(len(list(NOTEBOOKS.glob("*.ipynb"))) * CELL_TIMEOUT_S)
@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebook_runs(path: Path, kernel_dir: Path, shared: Path, tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    before = path.read_bytes()
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernelspec must be python3"
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name}: clear its outputs"
    _inject(nb, _overrides(shared))
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    t0 = time.monotonic()
    try:
        client.execute()
    finally:
        nbformat.write(nb, tmp_path / path.name)  # the executed copy, errors included, for a look afterwards
    print(f"{path.name}: {time.monotonic() - t0:.1f} s; executed copy {tmp_path / path.name}")
    assert path.read_bytes() == before
    unrendered = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" for o in c.outputs
                  if o.get("data", {}).get("text/plain", "").startswith("<Figure") and "image/png" not in o.data]
    assert not unrendered, f"{path.name}: figures not drawn in cells {unrendered} (add %matplotlib inline)"
    if path.stem == "04_failure_modes":
        _check_failure_lab(nb, _overrides(shared)["SCENARIOS"])
    else:
        SHOWS[path.stem](nb)


def _check_failure_lab(nb: Any, names: list[str]) -> None:
    """04 shows each scenario it ran: its heading, and a drawn timeline for the broken and for the fixed run."""
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    assert images == 2 * len(names), f"04: {images} figures drawn for {len(names)} scenarios"
    headings = [o["data"]["text/markdown"].partition("\n")[0] for o in outputs if "text/markdown" in o.get("data", {})]
    assert [h for h in headings if h.startswith("### ")] == [f"### {name}" for name in names]


# -- what each notebook shows: figures drawn, and the text and tables it prints ------------------------------------

def _cell(nb: Any, code: str, whole: bool = False) -> Any:
    """The first code cell whose source holds ``code`` (or is ``code``, ``whole``): cells are found by what they
    run, not by position."""
    found = [c for c in nb.cells if c.cell_type == "code" and (c.source.strip() == code if whole else code in c.source)]
    assert found, f"no cell runs {code!r}"
    return found[0]


def _text(cell: Any) -> str:
    """What the cell printed and the plain text of what it displayed."""
    parts = [o.get("text", "") for o in cell.outputs if o.output_type == "stream"]
    parts += [o["data"].get("text/plain", "") for o in cell.outputs if "data" in o]
    return "\n".join(parts)


def _images(cell: Any) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.outputs)


class _Table(HTMLParser):
    """The rows of the first HTML table (pandas' ``to_html`` / Styler), each a list of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self.rows:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _table(cell: Any) -> list[dict[str, str]]:
    """The cell's displayed table as records keyed by column name (the header row with the most cells)."""
    html = next(o["data"]["text/html"] for o in cell.outputs if "text/html" in o.get("data", {}))
    parser = _Table()
    parser.feed(html)
    rows = [r for r in parser.rows if r]
    header = max((r for r in rows if any(c for c in r)), key=len)
    # rows of values (a named index adds a row holding only its name)
    body = [r for r in rows[rows.index(header) + 1:] if len(r) == len(header) and any(r[1:])]
    return [dict(zip(header, r, strict=True)) for r in body]


def _shows_01(nb: Any) -> None:
    said = _text(_cell(nb, "run = await session("))
    m = re.search(r"^emulator: (\d+) turn\(s\), (\d+) turn_complete\(s\) with the greeting's; recording in ",
                  said, re.M)
    assert m, said
    turns, completes = int(m[1]), int(m[2])
    assert turns >= 1 and completes == turns + 1, said  # every turn answered, and the greeting
    assert "ended with an error" not in said
    assert _images(_cell(nb, "timeline(rec)", whole=True)) == 1
    table = _table(_cell(nb, "turn_table(rec)", whole=True))
    assert len(table) == turns and all(row["answered"] == "True" for row in table), table
    stats = _text(_cell(nb, "latency_stats(rec)", whole=True))
    assert "speech_end_to_activity_end_ms" in stats and "activity_end_to_first_audio_ms" in stats
    assert "0 protocol violation(s)" in _text(_cell(nb, "violations(rec)"))


def _shows_02(nb: Any) -> None:
    assert re.search(r"ended=True, problems=none", _text(_cell(nb, "rec = workbench.load(path)")))
    # the whole session, then one turn up close
    assert _images(_cell(nb, "timeline(rec)", whole=True)) + _images(_cell(nb, "t_range=")) == 2
    turns = _table(_cell(nb, "tt = turn_table(rec)"))
    assert len(turns) >= 1 and turns[0]["turn"] == "1"
    summary = re.search(r"(\d+) error\(s\), (\d+) warning\(s\), (\d+) note\(s\)",
                        _text(_cell(nb, "format_findings(diagnose(rec))")))
    assert summary and summary[1] == "0", summary  # the healthy session 01 made: no error
    # replayed with its own parameters, the detector reproduces the live decisions to within a 10 ms tick
    same = _table(_cell(nb, "compare_turns(live, replay_recording(rec, params))"))
    assert len(same) == len(turns)
    for row in same:
        for edge in ("activity_start_diff_ms", "activity_end_diff_ms"):
            assert abs(float(row[edge])) <= 10.0 + 1e-6, same
    what_if = _cell(nb, "what_if = ")
    assert _images(what_if) == 1
    shorter = _table(what_if)  # a 400 ms window ends each turn no later than the live 700 ms one did
    assert shorter and all(math.isnan(float(r["activity_end_diff_ms"])) or float(r["activity_end_diff_ms"]) < 0
                           for r in shorter), shorter


def _shows_03(nb: Any) -> None:
    moved = _text(_cell(nb, 'panel.sliders["silence_ms"].value = SILENCE_MS'))
    assert "silence_ms=700" in moved and "silence_ms=300" in moved and "speech_start" in moved
    assert json.loads(_text(_cell(nb, "saved = panel.save()")))["silence_ms"] == 700
    grid = _table(_cell(nb, "s = summary(df)"))
    assert len(grid) == 5 * 4 and "pareto" in grid[0]  # every silence_ms x start_db of GRID
    assert _images(_cell(nb, "tradeoff_plot(df)")) == 1
    assert _images(_cell(nb, "eot = sweep(")) == 1
    assert "silence_ms" in _text(_cell(nb, "top = best(df)"))


def _shows_05(nb: Any) -> None:
    assert re.search(r"^open http://127\.0\.0\.1:\d+/? - status: emulator", _text(_cell(nb, "start_in_background(")),
                     re.M)
    assert "no browser connected" in _text(_cell(nb, "await watching"))


def _shows_06(nb: Any) -> None:
    assert re.search(r"\d+ events, [\d.]+ s of mic, ended=True", _text(_cell(nb, "await example.run(")))
    found = _text(_cell(nb, "findings = diagnose(rec)"))
    # the field report's bridge, failure by failure: the receive loop stopped, audio after ActivityEnd, no ActivityEnd
    for code in ("receive_loop_idle", "audio_after_activity_end", "no_activity_end"):
        assert f" {code}" in found, found
    assert "(no turns)" not in _text(_cell(nb, "turns = replay_recording("))
    assert _images(_cell(nb, "fig = timeline(")) == 1
    exported = _text(_cell(nb, 'for fmt in ("otlp-json", "audacity")'))
    assert "traces.otlp.jsonl" in exported and "mic.labels.txt" in exported  # the files written, then the labels
    assert re.search(r"^[\d.]+\t[\d.]+\tturn 1 \(ActivityEnd at [\d.]+ s, silence\)$", exported, re.M), exported


SHOWS = {"01_live_session": _shows_01, "02_replay_and_analyse": _shows_02, "03_tune_vad": _shows_03,
         "05_browser_session": _shows_05, "06_your_bridge": _shows_06}


def test_every_notebook_has_its_checks() -> None:
    assert {p.stem for p in NOTEBOOKS.glob("*.ipynb")} == {*SHOWS, "04_failure_modes"}


def _render_module() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("notebooks_render", NOTEBOOKS / "render.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rendered_pages_are_current() -> None:
    """notebooks/rendered/ has one page per notebook, rendered from the notebook and code as they are now.

    The page's header holds the digest of its inputs (notebooks/render.py); a notebook, workbench/ or
    examples/ change since ``make pages`` makes it differ.  Its figures are where the page links them.
    """
    render = _render_module()
    pages = {p.stem for p in render.RENDERED.glob("*.md")}
    assert pages == {p.stem for p in render.notebooks()}, "notebooks/rendered/ out of step: run `make pages`"
    stale = [p.name for p in render.notebooks() if render.recorded_digest(render.page_of(p)) != render.digest(p)]
    assert not stale, f"rendered pages older than their notebook or the code: {stale}; run `make pages`"
    for page in render.RENDERED.glob("*.md"):
        text = page.read_text(encoding="utf-8")
        missing = [m for m in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text) if not (page.parent / m).is_file()]
        assert not missing, f"{page.name}: figures linked but not there: {missing}"
        assert "Traceback" not in text, f"{page.name}: rendered with an error"


def test_page_digest_follows_the_notebook_and_the_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The staleness check can fail: an edited cell or an edited module changes the digest, an output does not."""
    render = _render_module()
    nb = json.loads((NOTEBOOKS / "03_tune_vad.ipynb").read_text())
    path = tmp_path / "03_tune_vad.ipynb"
    path.write_text(json.dumps(nb))
    d0 = render.digest(path)
    nb["cells"][-1]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "ran once"}]
    path.write_text(json.dumps(nb))
    assert render.digest(path) == d0
    nb["cells"][-1]["source"] = "eot_summary(eot).round(2)"
    path.write_text(json.dumps(nb))
    d1 = render.digest(path)
    assert d1 != d0
    code = tmp_path / "repo"
    (code / "workbench").mkdir(parents=True)
    (code / "examples").mkdir()
    (code / "workbench" / "x.py").write_text("A = 1\n")
    monkeypatch.setattr(render, "REPO", code)
    d2 = render.digest(path)
    (code / "workbench" / "x.py").write_text("A = 2\n")
    assert render.digest(path) != d2
