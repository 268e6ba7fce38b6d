"""Render every notebook, run from a clean kernel, to a Markdown page in notebooks/rendered/ (``make pages``).

Why pages and not committed outputs: the notebooks stay output-free (small diffs, nothing of a
developer's own session committed), and a newcomer browsing the repository still sees what each
notebook shows: ``rendered/NAME.md`` with its figures in ``rendered/NAME_files/``, readable on a
code host or in any Markdown viewer, no install needed.

Each page starts with a comment holding ``digest()``: a hash of the notebook's cells, the
parameters it was rendered with, and every Python file under ``workbench/`` and ``examples/``.
tests/test_notebooks.py recomputes it, so a page whose notebook or code changed since it was
rendered fails the suite ("run make pages") instead of silently showing old output.  The digest
covers inputs, not outputs: a session's timings differ from run to run, and the check cannot flap
on them.

Run with the defaults each notebook has, except: the embedded emulator (never real Gemini, so a
page does not depend on who rendered it), and recordings in a temporary directory (not the
repository's recordings/), whose path the pages show as ``<tmp>``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NOTEBOOKS = Path(__file__).resolve().parent
REPO = NOTEBOOKS.parent
RENDERED = NOTEBOOKS / "rendered"
CODE_DIRS = ("workbench", "examples")  # what the notebooks run; a change there may change what they show
HEADER = re.compile(r"<!-- make pages: inputs ([0-9a-f]{16}) ")
CELL_TIMEOUT_S = 600


def overrides(tmp: str) -> dict[str, Any]:
    """The parameters a page is rendered with (only those a notebook's ``parameters`` cell defines apply)."""
    # 04: four sessions at a time, not eleven: a loaded machine splits turns and stalls frames on the pages
    return {"USE_GEMINI": False, "RECORDINGS_DIR": tmp, "OUT_DIR": tmp, "JOBS": 2, "CONCURRENCY": 4}


def notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def page_of(nb_path: Path) -> Path:
    return RENDERED / f"{nb_path.stem}.md"


def digest(nb_path: Path) -> str:
    """What a page shows depends on: the notebook's cells, the render parameters, the code it runs."""
    h = hashlib.sha256()
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        h.update(f"{cell['cell_type']}\0{src}\0".encode())
    h.update(json.dumps(sorted(overrides("<tmp>").items())).encode())
    for d in CODE_DIRS:
        for p in sorted((REPO / d).rglob("*.py")):
            h.update(f"{p.relative_to(REPO).as_posix()}\0".encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def recorded_digest(page: Path) -> str | None:
    """The digest a page was rendered with (None: no page, or no header)."""
    if not page.exists():
        return None
    m = HEADER.match(page.read_text(encoding="utf-8"))
    return m.group(1) if m else None


def _inject(nb: Any, values: dict[str, Any]) -> None:
    """After the ``parameters`` cell, a cell setting the names it defines that ``values`` overrides."""
    import nbformat

    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            names = [k for k in values if re.search(rf"^{k}\s*=", cell.source, re.M)]
            if names:
                src = "# set by make pages (notebooks/render.py)\n" + "\n".join(
                    f"{k} = {values[k]!r}" for k in names)
                nb.cells.insert(i + 1, nbformat.v4.new_code_cell(src, metadata={"tags": ["injected-parameters"]}))
            return


def _kernel_dir(root: Path) -> Path:
    """A ``python3`` kernelspec for this interpreter, found first whatever else is installed."""
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)", "language": "python"}))
    return root


def _small_png(data: bytes) -> bytes:
    """A figure with 128 colours: plots lose nothing visible and the PNG is about a third the size."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").quantize(128, method=Image.Quantize.FASTOCTREE).save(
        out, "PNG", optimize=True)
    return out.getvalue()


def render(nb_path: Path, tmp: Path) -> Path:
    """Run one notebook top to bottom and write its page and figures; returns the page."""
    import nbclient
    import nbformat
    from nbconvert import MarkdownExporter

    nb = nbformat.read(nb_path, as_version=4)
    _inject(nb, overrides(str(tmp)))
    t0 = time.monotonic()
    nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    files = f"{nb_path.stem}_files"
    body, resources = MarkdownExporter().from_notebook_node(
        nb, resources={"output_files_dir": files, "unique_key": "output"})
    shutil.rmtree(RENDERED / files, ignore_errors=True)
    for name, data in resources.get("outputs", {}).items():
        out = RENDERED / name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(_small_png(data) if name.endswith(".png") else data)
    body = body.replace(str(tmp), "<tmp>")
    body = re.sub(r"<style[^>]*>.*?</style>\s*", "", body, flags=re.S)  # code hosts show the CSS as text
    header = (f"<!-- make pages: inputs {digest(nb_path)} (the notebook's cells, its render parameters, "
              f"{' and '.join(d + '/' for d in CODE_DIRS)} code); do not edit, run `make pages` -->\n\n"
              f"*Rendered from [`{nb_path.name}`](../{nb_path.name}) by `make pages`: a clean run on the embedded "
              "emulator. Open the notebook in JupyterLab (`make lab`) to run it yourself.*\n\n")
    page = page_of(nb_path)
    page.write_text(header + body.strip() + "\n", encoding="utf-8")
    print(f"{page.relative_to(REPO)}: {time.monotonic() - t0:.0f} s, {len(resources.get('outputs', {}))} figure(s)")
    return page


def main(argv: list[str]) -> int:
    """``python notebooks/render.py [NAME ...]``: render the named notebooks (default: all)."""
    import os

    chosen = [p for p in notebooks() if not argv or p.stem in argv or p.name in argv]
    if argv and len(chosen) != len(argv):
        known = ", ".join(p.stem for p in notebooks())
        print(f"render: error: unknown notebook in {argv}; known: {known}", file=sys.stderr)
        return 2
    RENDERED.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="workbench-pages-") as tmp:
        os.environ["JUPYTER_PATH"] = str(_kernel_dir(Path(tmp) / "jupyter"))
        rec = Path(tmp) / "recordings"
        rec.mkdir()
        for nb_path in chosen:  # in order: 02 reads the recording 01 made
            render(nb_path, rec)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
