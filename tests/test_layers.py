"""The package's layers, checked from the source: what each layer may import, and that cores open no files.

The folder shows the layer (README, "Layout"): ``core`` holds the decisions, sans-I/O; ``emulator`` its protocol core
plus the server shell; ``store`` files; ``io`` the event loop and the network; ``analysis`` reads recordings; ``ui``
is what a user touches. A core that imported asyncio or the SDK, or read a file, could no longer run the same way
live, in replay and in tests; a lower layer that imported the UI would drag plotting and widgets into the bridge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "workbench"

# Layers below the UI, lowest first: a module may import its own layer and the layers before it.
ORDER = ("core", "store", "emulator", "io", "analysis", "ui")
ALLOWED = {layer: set(ORDER[: i + 1]) for i, layer in enumerate(ORDER)}
ALLOWED["emulator"] = {"core", "emulator", "io"}  # the emulator's __main__ runs on workbench.io.eventloop
ALLOWED["store"] = {"core", "store"}
# Third-party and stdlib modules a pure core must not import (the emulator's core and faults count as cores).
NOT_IN_CORE = ("asyncio", "aiortc", "aioice", "av", "google", "websockets", "aiohttp", "ssl", "socket", "soundfile",
               "threading", "concurrent", "subprocess", "matplotlib", "pandas", "IPython", "ipywidgets")
CORES = sorted((PKG / "core").glob("*.py")) + [PKG / "emulator" / "core.py", PKG / "emulator" / "faults.py"]

# Calls that open files. A core gets bytes, arrays and paths' contents handed in by a shell.
FILE_CALLS = {"open", "read_text", "read_bytes", "write_text", "write_bytes", "InferenceSession", "load", "loadtxt",
              "fromfile", "savez", "save"}


def imports(path: Path) -> list[tuple[str, int]]:
    """Every module a file imports (absolute names; relative imports resolved), with its line."""
    tree = ast.parse(path.read_text(), filename=str(path))
    pkg = ".".join(path.relative_to(PKG.parent).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((mod, node.lineno))
            if mod in ("workbench", *(f"workbench.{layer}" for layer in ORDER)):
                out += [(f"{mod}.{a.name}", node.lineno) for a in node.names]
    return out


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "workbench" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in ORDER else None


MODULES = sorted(p for p in PKG.rglob("*.py") if layer_of(".".join(p.relative_to(PKG.parent).parts)))


def test_every_module_sits_in_a_layer() -> None:
    loose = [p.name for p in PKG.glob("*.py") if p.name not in ("__init__.py", "__main__.py", "tap.py")]
    assert not loose, f"modules outside a layer folder: {loose}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_layer_imports_only_itself_and_below(path: Path) -> None:
    own = layer_of(".".join(path.relative_to(PKG.parent).parts))
    bad = [(m, line) for m, line in imports(path)
           if (target := layer_of(m)) is not None and target not in ALLOWED[own]]
    assert not bad, f"{path.relative_to(PKG)} ({own}) imports {bad}"


@pytest.mark.parametrize("path", CORES, ids=lambda p: str(p.relative_to(PKG)))
def test_cores_import_no_io(path: Path) -> None:
    bad = [(m, line) for m, line in imports(path) if m.split(".")[0] in NOT_IN_CORE]
    assert not bad, f"{path.relative_to(PKG)} is a core and imports {bad}"


@pytest.mark.parametrize("path", CORES, ids=lambda p: str(p.relative_to(PKG)))
def test_cores_open_no_files(path: Path) -> None:
    tree = ast.parse(path.read_text())
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            if name in FILE_CALLS:
                calls.append((name, node.lineno))
    assert not calls, f"{path.relative_to(PKG)} is a core and opens files: {calls}"


def test_importing_the_cores_pulls_in_no_network_stack() -> None:
    """Checked in a fresh interpreter: the import graph, not only the source text."""
    import subprocess
    import sys

    code = ("import sys, workbench.core.turns, workbench.core.pipeline, workbench.core.connection, "
            "workbench.core.ledger, workbench.emulator; "
            "print(sorted(m for m in ('asyncio', 'aiortc', 'google.genai', 'websockets', 'aiohttp', 'ssl', "
            "'cryptography', 'pandas', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"importing the cores imported {out}"
