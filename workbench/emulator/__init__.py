"""The Live API emulator: our own server speaking the BidiGenerateContent wire protocol, with faults."""

from .core import (
    FROM_PROFILE,
    PROFILES,
    Close,
    EmulatorConfig,
    LogEntry,
    PauseReading,
    SendJson,
    SendPong,
    SessionCore,
    Violation,
)
from .faults import FAULTS, Fault, parse_fault
from .server import Emulator

__all__ = [
    "FAULTS", "FROM_PROFILE", "PROFILES", "Close", "Emulator", "EmulatorConfig", "Fault", "LogEntry", "PauseReading",
    "SendJson", "SendPong", "SessionCore", "Violation", "parse_fault",
]
