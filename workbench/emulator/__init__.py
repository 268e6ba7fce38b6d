"""The Live API emulator: our own server speaking the BidiGenerateContent wire protocol, with faults.

``core`` (the protocol state, sans-I/O) and ``faults`` are imported here; ``server`` (websockets, ssl) and
``certs`` (cryptography) only when ``Emulator`` is first asked for, so that importing the core (as the socket-free
tests and the analysis do) does not pull in the network stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workbench.emulator.core import (
    FROM_PROFILE,
    PROFILES,
    Activity,
    Close,
    EmulatorConfig,
    LogEntry,
    PauseReading,
    Phase,
    SendJson,
    SendPong,
    SessionCore,
    Violation,
)
from workbench.emulator.faults import FAULTS, Fault, parse_fault

if TYPE_CHECKING:
    from workbench.emulator.server import Emulator

__all__ = [
    "FAULTS", "FROM_PROFILE", "PROFILES", "Activity", "Close", "Emulator", "EmulatorConfig", "Fault", "LogEntry",
    "PauseReading", "Phase", "SendJson", "SendPong", "SessionCore", "Violation", "parse_fault",
]


def __getattr__(name: str) -> Any:
    if name == "Emulator":
        from workbench.emulator.server import Emulator

        return Emulator
    raise AttributeError(f"module 'workbench.emulator' has no attribute {name!r}")
