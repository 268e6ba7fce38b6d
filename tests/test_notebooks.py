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
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
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
        # 04: one scenario of each kind (all 17 take ~2.5 min here): a field-report mistake, the keepalive, barge-in,
        # goAway by age, a server that never answers, strict input
        "SCENARIOS": ["receive-once", "late-pongs", "barge-in", "go-away-age", "heard@every", "strict-input"],
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


def _check_failure_lab(nb: Any, names: list[str]) -> None:
    """04 shows each scenario it ran: its heading, and a drawn timeline for the broken and for the fixed run."""
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    assert images == 2 * len(names), f"04: {images} figures drawn for {len(names)} scenarios"
    headings = [o["data"]["text/markdown"].partition("\n")[0] for o in outputs if "text/markdown" in o.get("data", {})]
    assert [h for h in headings if h.startswith("### ")] == [f"### {name}" for name in names]


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
