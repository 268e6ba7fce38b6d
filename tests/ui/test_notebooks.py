"""Every notebook in notebooks/ runs headless, top to bottom, with short parameters.

Parameters are injected papermill-style: a cell after the ``parameters``-tagged cell overrides the
names that cell defines (only those, so a new notebook gets what applies to it).  The notebooks run
in the current interpreter, cwd ``notebooks/`` as in JupyterLab; executed copies go to tmp and the
committed notebooks are never written.
"""

from __future__ import annotations

import ast
import json
import sys
import time
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
