"""The commands' event loop: uvloop by default, asyncio's on request, a clear error for anything else."""

from __future__ import annotations

import pytest

from workbench.io import eventloop


async def _name() -> str:
    return eventloop.running_loop_name()


def test_uvloop_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(eventloop.ENV, raising=False)
    assert eventloop.choice() == "uvloop" and eventloop.run(_name()) == "uvloop"


def test_asyncio_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(eventloop.ENV, "asyncio")
    assert eventloop.run(_name()) == "asyncio"
    loop = eventloop.new_event_loop()
    try:
        assert loop.run_until_complete(_name()) == "asyncio"
    finally:
        loop.close()


def test_anything_else_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(eventloop.ENV, "trio")
    with pytest.raises(ValueError, match="WORKBENCH_LOOP must be one of uvloop, asyncio"):
        eventloop.choice()
