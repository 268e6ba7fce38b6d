"""Faults the emulator can inject, named as on the command line: ``NAME[:ARG]``."""

from __future__ import annotations

from dataclasses import dataclass

FAULTS = {
    "no-response": "ignore an activity's end, never answer (Failure A); ARG: which activity (default every)",
    "stall": "stop reading the socket and answering pings for ARG seconds after an activity ends (default 30)",
    "close-1011": "close with 1011 ARG seconds after setup (default 5), or 'mid-turn' during an answer",
    "go-away": "send goAway with ARG seconds left after the first answer (default 2), then close",
    "slow": "answer after ARG seconds (default 8)",
    "flood": "send ARG small inputTranscription messages per second during user speech (default 50)",
}


@dataclass(frozen=True)
class Fault:
    name: str
    arg: str | None = None
    every_connection: bool = False  # by default a fault hits the first connection only, so a resume works


def parse_fault(spec: str) -> Fault:
    """``"stall:25"`` -> Fault("stall", "25"); a one-line ValueError names what is wrong."""
    name, _, arg = spec.strip().partition(":")
    if name not in FAULTS:
        raise ValueError(f"unknown fault {name!r}; choose one of: {', '.join(FAULTS)}")
    arg = arg.strip() or None
    if arg is not None:
        if name == "close-1011" and arg == "mid-turn":
            return Fault(name, arg)
        try:
            value = float(arg)
        except ValueError:
            raise ValueError(f"fault {name}: argument {arg!r} must be a number of seconds") from None
        if value < 0 or value > 3600:
            raise ValueError(f"fault {name}: argument {arg!r} must be between 0 and 3600")
        if name == "no-response" and value != int(value):
            raise ValueError(f"fault no-response: argument {arg!r} must be an activity number")
    return Fault(name, arg)
