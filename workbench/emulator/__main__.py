"""``workbench emulator``: serve the Live API emulator until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import sys

from .. import eventloop
from .core import EmulatorConfig
from .faults import FAULTS, parse_fault
from .server import Emulator


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="workbench emulator",
        description="Serve a Gemini Live API emulator over TLS on 127.0.0.1. Point the google-genai SDK at it "
                    "with HttpOptions(base_url=URL) and trust its certificate with SSL_CERT_FILE=CERT.",
        epilog="faults: " + "; ".join(f"{k}: {v}" for k, v in FAULTS.items()),
    )
    ap.add_argument("--port", type=int, default=9443, help="TCP port (default %(default)s; 0 picks a free one)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--cert-out", help="also copy the self-signed certificate (PEM) to this file")
    ap.add_argument("--reply-s", type=float, default=1.0, help="length of each spoken answer, s")
    ap.add_argument("--latency-s", type=float, default=0.15, help="activityEnd -> first answer message, s")
    ap.add_argument("--greet", action=argparse.BooleanOptionalAction, default=True,
                    help="answer a clientContent turn (e.g. 'greet the candidate') with a spoken greeting")
    ap.add_argument("--strict", action="store_true", help="close with 1007 on audio outside an activity")
    ap.add_argument("--tool-call-turns", default="",
                    help="user turns (1-based, comma separated) answered with a toolCall first")
    ap.add_argument("--reject-resume-while-open", action="store_true",
                    help="close 1011 a resume whose old connection is still open (reported of the real service)")
    ap.add_argument("--fault", action="append", default=[], metavar="NAME[:ARG]", help="inject a fault")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        turns = tuple(int(x) for x in args.tool_call_turns.split(",") if x.strip())
        config = EmulatorConfig(reply_s=args.reply_s, latency_s=args.latency_s, greet=args.greet,
                                outside_audio="strict" if args.strict else "discard",
                                tool_call_turns=turns, reject_resume_while_open=args.reject_resume_while_open,
                                faults=[parse_fault(f) for f in args.fault])
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
            print(f"certificate: {args.cert_out or emu.cert_path}  (export SSL_CERT_FILE=...)", flush=True)
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
