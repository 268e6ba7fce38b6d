"""``workbench emulator``: serve the Live API emulator until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import sys
from typing import Any

from workbench.emulator.core import PROFILES, EmulatorConfig
from workbench.emulator.faults import FAULTS, parse_fault
from workbench.emulator.server import Emulator
from workbench.io import eventloop


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="workbench emulator",
        description="Serve a Gemini Live API emulator over TLS on 127.0.0.1. Point the google-genai SDK at it "
                    "with HttpOptions(base_url=URL) and trust its certificate with SSL_CERT_FILE=CERT.",
        epilog="faults (NAME[:ARG][@every]; @every hits every connection, not only the first): "
               + "; ".join(f"{k}: {v}" for k, v in FAULTS.items()),
    )
    ap.add_argument("--port", type=int, default=9443, help="TCP port (default %(default)s; 0 picks a free one)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--cert-out", help="also copy the self-signed certificate (PEM) to this file")
    add_behaviour_args(ap)
    return ap


def add_behaviour_args(ap: argparse.ArgumentParser) -> None:
    """The options that shape the emulated service."""
    ap.add_argument("--profile", choices=sorted(PROFILES), default="real",
                    help="real: the service as the public record shows it (default); ideal: the forgiving server "
                         "(instant pongs, no barge-in, 150 ms answers, live handles, no time limits)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the emulator's random draws (default 0)")
    ap.add_argument("--reply-s", type=float, default=1.0, help="length of each spoken answer, s")
    ap.add_argument("--latency-s", type=float, default=None,
                    help="fixed activityEnd -> first answer latency, s (default: the profile's; real draws it)")
    ap.add_argument("--pong-delay", type=float, default=None, metavar="S",
                    help="answer websocket pings S seconds late (default: the profile's; real draws 8-30 s)")
    ap.add_argument("--connection-s", type=float, default=None, metavar="S",
                    help="connection age limit: goAway, then close 1011 (default: the profile's; real 600)")
    ap.add_argument("--session-s", type=float, default=None, metavar="S",
                    help="session time limit without contextWindowCompression (default: the profile's; real 900)")
    ap.add_argument("--greet", action=argparse.BooleanOptionalAction, default=True,
                    help="answer a clientContent turn (e.g. 'greet the candidate') with a spoken greeting")
    audio = ap.add_mutually_exclusive_group()
    audio.add_argument("--strict", action="store_true", help="close with 1007 on audio outside an activity "
                       "(the real profile's default)")
    audio.add_argument("--lenient-audio", action="store_true",
                       help="discard audio outside an activity instead of closing 1007")
    ap.add_argument("--tool-call-turns", default="",
                    help="user turns (1-based, comma separated) answered with a toolCall first")
    ap.add_argument("--reject-resume-while-open", action=argparse.BooleanOptionalAction, default=None,
                    help="close 1011 a resume whose old connection is still open (default: the profile's; real on)")
    ap.add_argument("--fault", action="append", default=[], metavar="NAME[:ARG][@every]", help="inject a fault")


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """An ``EmulatorConfig`` from ``add_behaviour_args`` options; ValueError (one line) on bad values."""
    turns = tuple(int(x) for x in args.tool_call_turns.split(",") if x.strip())
    kw: dict[str, Any] = {}
    if args.latency_s is not None:
        kw["latency_s"] = args.latency_s
    if args.pong_delay is not None:
        kw["pong_delay_s"] = args.pong_delay
    if args.connection_s is not None:
        kw["connection_s"] = args.connection_s
    if args.session_s is not None:
        kw["session_s"] = args.session_s
    if args.strict or args.lenient_audio:
        kw["outside_audio"] = "strict" if args.strict else "discard"
    if args.reject_resume_while_open is not None:
        kw["reject_resume_while_open"] = args.reject_resume_while_open
    return EmulatorConfig(profile=args.profile, seed=args.seed, reply_s=args.reply_s, greet=args.greet,
                          tool_call_turns=turns, faults=[parse_fault(f) for f in args.fault], **kw)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"workbench emulator: error: {exc}", file=sys.stderr)
        return 2

    async def serve() -> None:
        # SIGTERM and SIGINT end the server the same way, through ``async with``, so the certificate's temporary
        # directory (its private key) is removed either way, not only on Ctrl-C.
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        emu = Emulator(config, port=args.port, host=args.host)
        async with emu:
            if args.cert_out:
                shutil.copy(emu.cert_path, args.cert_out)
            print(f"Live API emulator at {emu.base_url}", flush=True)
            print(f"certificate: {args.cert_out or emu.cert_path}  (export SSL_CERT_FILE=...); "
                  f"profile {config.profile}", flush=True)
            await stop.wait()

    try:
        eventloop.run(serve())
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"workbench emulator: error: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
