"""Faults the emulator can inject, named as on the command line: ``NAME[:ARG]``."""

from __future__ import annotations

from dataclasses import dataclass

FAULTS = {
    "no-response": "ignore the end of user turn ARG (1-based, counted over the conversation), never answer it "
                   "(Failure A); default every user turn",
    "stall": "stop reading the socket (so stop answering pings) and stop sending for ARG seconds (default 30), "
             "from the first activityEnd; ARG 'N@start' stalls from the first activityStart instead",
    "close-1011": "close with 1011 ARG seconds after setup (default 5), or 'mid-turn' during the first spoken answer "
                  "to the user",
    "go-away": "after the first answer to the user send goAway with ARG seconds left (default 2), then close",
    "slow": "answer after ARG seconds instead of the configured latency (default 8)",
    "flood": "send ARG small inputTranscription messages per second during user speech (default 50)",
}
DEFAULTS = {"no-response": None, "stall": 30.0, "close-1011": 5.0, "go-away": 2.0, "slow": 8.0, "flood": 50.0}
STALL_TRIGGERS = ("end", "start")


@dataclass(frozen=True)
class Fault:
    """One injected failure; ``arg`` is kept as typed and read through the properties below."""

    name: str
    arg: str | None = None
    every_connection: bool = False  # by default a fault hits the first connection only, so a resume works

    @property
    def seconds(self) -> float:
        """The fault's duration / delay / rate argument, or its default."""
        if self.arg is None or self.arg == "mid-turn":
            return float(DEFAULTS[self.name] or 0.0)
        return float(self.arg.partition("@")[0])

    @property
    def turn(self) -> int | None:
        """``no-response``: the user turn to ignore (None: every one)."""
        return None if self.arg is None else int(self.arg)

    @property
    def trigger(self) -> str:
        """``stall``: which client signal starts it, "end" (activityEnd) or "start" (activityStart)."""
        return (self.arg or "").partition("@")[2] or "end"


def parse_fault(spec: str) -> Fault:
    """``"stall:25"`` -> Fault("stall", "25"); a one-line ValueError names what is wrong."""
    name, _, arg = spec.strip().partition(":")
    if name not in FAULTS:
        raise ValueError(f"unknown fault {name!r} in {spec!r}; choose one of: {', '.join(FAULTS)}")
    arg = arg.strip() or None
    if arg is None:
        return Fault(name)
    if name == "close-1011" and arg == "mid-turn":
        return Fault(name, arg)
    number, at, trigger = arg.partition("@")
    if at and (name != "stall" or trigger not in STALL_TRIGGERS):
        raise ValueError(f"fault {name}: bad argument {arg!r}; only stall takes '@start' or '@end'")
    try:
        value = float(number)
    except ValueError:
        what = "a user turn number" if name == "no-response" else "a number"
        raise ValueError(f"fault {name}: argument {arg!r} must be {what}") from None
    if not 0 <= value <= 3600:
        raise ValueError(f"fault {name}: argument {arg!r} must be between 0 and 3600")
    if name == "no-response" and (value != int(value) or value < 1):
        raise ValueError(f"fault no-response: argument {arg!r} must be a user turn number (1, 2, ...)")
    if name == "no-response":
        arg = str(int(value))
    if name == "flood" and value <= 0:
        raise ValueError(f"fault flood: argument {arg!r} must be a rate > 0 messages per second")
    return Fault(name, arg)
