"""``--params FILE``: turn-detector parameters as a JSON object, read here (the core builds from a dict)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from workbench.core.params import TurnParams


def read_params(path: str | os.PathLike[str]) -> TurnParams:
    """Read a JSON object of parameters (missing keys keep their defaults); ValueError on a bad file or value."""
    p = Path(path)
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{p}: cannot read parameters ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object of TurnParams")
    return TurnParams.from_dict(d)
