"""The event loop the workbench's commands run on: uvloop where it is installed, else asyncio's own.

Why uvloop: a bridged session wakes the loop ~150 times a second (RTP packets, decoded frames, sends,
server messages, timers), and libuv's loop does that wake-up for less CPU, with less loop lag when many
sessions share a process.  The figures, side by side with asyncio's loop, are in ``bench/BENCHMARKS.md``
("Concurrent sessions", "Per-session CPU, the earlier run"); that is the place to re-measure them.

Contract: everything the bridge uses runs on both loops (aiortc, aioice, websockets with TLS, aiohttp);
tests run sessions on both.  ``WORKBENCH_LOOP=asyncio`` picks asyncio's loop (to compare, or if uvloop
misbehaves), ``WORKBENCH_LOOP=uvloop`` insists on uvloop (an error if it is not installed); a recording's
``session.json`` says which loop ran it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
ENV = "WORKBENCH_LOOP"
CHOICES = ("uvloop", "asyncio")


def choice() -> str:
    """``uvloop`` or ``asyncio``: what ``run`` will use (``WORKBENCH_LOOP``, else uvloop when importable)."""
    wanted = os.environ.get(ENV, "").strip().lower()
    if wanted and wanted not in CHOICES:
        raise ValueError(f"{ENV} must be one of {', '.join(CHOICES)}, not {wanted!r}")
    if wanted == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if wanted == "uvloop":
            raise ValueError(f"{ENV}=uvloop, but uvloop is not installed (pip install uvloop)") from None
        return "asyncio"
    return "uvloop"


def new_event_loop(kind: str | None = None) -> asyncio.AbstractEventLoop:
    """A new loop of ``kind`` (one of ``CHOICES``; None: ``choice()``), e.g. for a loop on a thread of its own."""
    kind = kind or choice()
    if kind not in CHOICES:
        raise ValueError(f"event loop must be one of {', '.join(CHOICES)}, not {kind!r}")
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(main: Coroutine[Any, Any, T], kind: str | None = None) -> T:
    """``asyncio.run(main)`` on a loop of ``kind`` (None: ``choice()``)."""
    kind = kind or choice()
    with asyncio.Runner(loop_factory=lambda: new_event_loop(kind)) as runner:
        return runner.run(main)


def running_loop_name() -> str:
    """The kind of the running loop, for the record: ``uvloop``, ``asyncio`` or the class's module."""
    loop = asyncio.get_running_loop()
    module = type(loop).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio" if module.startswith("asyncio") else module
