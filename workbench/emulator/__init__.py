"""The Live API emulator: our own server speaking the BidiGenerateContent wire protocol, with faults."""

from .core import Close, EmulatorConfig, LogEntry, PauseReading, SendJson, SessionCore, Violation
from .faults import FAULTS, Fault, parse_fault
from .server import Emulator

__all__ = [
    "FAULTS", "Close", "Emulator", "EmulatorConfig", "Fault", "LogEntry", "PauseReading", "SendJson",
    "SessionCore", "Violation", "parse_fault",
]
