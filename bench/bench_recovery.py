"""Recovery benchmark: the real bridge against every fault and real-profile behaviour of the emulator.

Run:  .venv/bin/python bench/bench_recovery.py [--write] [--concurrency N]

One session per scenario (the bundled three-turn candidate track, DTX, the greeting), N at a time
(default 4) in one event loop, against one emulator each (``workbench.ui.lab.Side``, ``lab.run_side``), profile
"real", the bridge's default recovery settings
(watchdog 5 s, heard 20 s, dead connection 8 s, 2 re-sends, 5 reconnects a minute, pings every
20 s with no pong timeout) unless the scenario names a change.  Per scenario: how it ended, user
turns answered (the bridge's turn table: a turn whose last attempt got its turn_complete or was
interrupted), answers the emulator sent to user turns, ``duplicate_turn`` and ``lost_turn`` flags
from the emulator's own log, reconnects, re-sends, and the time to recover: from the first
reconnect decision to the new connection (or, for a give-up, from the first ActivityEnd to the
give-up) and to the answer of the re-sent turn.  ``--write`` puts the table in bench/BENCHMARKS.md under "## Recovery".
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import arg_parser, publish, section  # noqa: E402

import workbench  # noqa: E402
from workbench.analysis.tables import turn_table, user_turns  # noqa: E402
from workbench.ui import lab  # noqa: E402
from workbench.ui.cli import BUNDLED  # noqa: E402

TITLE = "Recovery"
Side = lab.Side  # the failure lab's session setup: emulator (profile real here) and bridge overrides
# name: (what, the session: faults, emulator overrides, LiveSettings overrides, SessionConfig overrides)
SCENARIOS: dict[str, tuple[str, Side]] = {
    "healthy": ("real profile, no fault", Side()),
    "late pongs": ("pongs 25 s late on every connection, pings every 2 s",
                   Side(faults=("slow-pong:25@every",), live={"ping_interval_s": 2.0})),
    "barge-in": ("answers 6 s long: each next turn starts during the last answer", Side(emu={"reply_s": 6.0})),
    "latency spikes": ("every answer 7-15 s late (heard at 0.2 s)", Side(emu={"spike_p": 1.0})),
    "short spikes": ("every answer 2-2.8 s late, watchdog 1 s",
                     Side(emu={"spike_p": 1.0, "spike_s": (2.0, 2.8)}, bridge={"watchdog_s": 1.0})),
    "silent@every": ("no-response:silent@every", Side(faults=("no-response:silent@every",))),
    "heard@every": ("no-response:heard@every", Side(faults=("no-response:heard@every",))),
    "empty@every": ("no-response:empty@every", Side(faults=("no-response:empty@every",))),
    "late@every": ("no-response:late@every (55 s gap)", Side(faults=("no-response:late@every",))),
    "late@every 10 s": ("no-response:late@every, 10 s gap",
                        Side(faults=("no-response:late@every",), emu={"late_gap_s": 10.0})),
    "noise@every": ("no-response:noise@every (the track is speech)", Side(faults=("no-response:noise@every",))),
    "goAway mid-answer": ("connections live 12 s: goAway 3 s before, then close 1011",
                          Side(emu={"connection_s": 12.0, "go_away_lead_s": (3.0, 3.0)})),
    "1011 mid-turn": ("close-1011:mid-turn", Side(faults=("close-1011:mid-turn",))),
    "stall 6 s": ("stall:6 (resume rejected while the stalled socket counts as open)", Side(faults=("stall:6",))),
}


def candidate() -> np.ndarray:
    x, rate = sf.read(BUNDLED, dtype="int16")
    assert rate == 48_000
    return x


async def one(name: str, root: Path, samples: np.ndarray) -> dict[str, Any]:
    what, side = SCENARIOS[name]
    out = root / name.replace(" ", "-").replace("@", "-")
    t0 = time.monotonic()
    result, log, violations = await lab.run_side(side, samples, out, name=name)
    wall = time.monotonic() - t0
    rec = workbench.load(out)
    ut = user_turns(rec)
    cl = rec.of_kind("client")
    recover = answer_s = None
    reconnect_t = cl[cl["action"] == "reconnect"]["t"].to_numpy() if len(cl) else np.array([])
    reasons = ", ".join(f"{r} x{n}" for r, n in cl[cl["action"] == "reconnect"]["reason"].value_counts().items()) \
        if len(cl) else ""
    if result.gave_up is not None:
        snd = rec.of_kind("send")
        ends = snd[snd["msg"] == "activity_end"]["t"].to_numpy()
        give = cl[cl["action"] == "give_up"]["t"].to_numpy()
        if ends.size and give.size:
            recover = float(give[0] - ends.min())
    elif reconnect_t.size:
        ws = rec.of_kind("ws")
        up = ws[ws["what"] == "connect"]["t"].to_numpy()
        up = up[up > reconnect_t[0]]
        recover = float(up[0] - reconnect_t[0]) if up.size else None
        tt = turn_table(rec)
        again = tt[(tt["attempt"] > 1) & tt["answered"]]
        if len(again):
            answer_s = float(again["turn_complete"].min() - reconnect_t[0])
    return {
        "name": name, "what": what,
        "outcome": "all answered" if result.gave_up is None and result.error is None and not result.unanswered
        else (f"gave up: {result.gave_up['reason']}" if result.gave_up else f"error: {result.error}"),
        "answered": int(ut["answered"].sum()) if len(ut) else 0,
        "server_answers": lab.server_answers(log),
        "duplicated": sum(v.rule == "duplicate_turn" for v in violations),
        "lost": sum(v.rule == "lost_turn" for v in violations),
        "reconnects": result.reconnects,
        "resends": int((cl["action"] == "resend").sum()) if len(cl) else 0,
        "recover_s": recover,
        "answer_s": answer_s,
        "reasons": reasons,
        "activities": result.activities,
        "wall_s": wall,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| scenario | emulator (profile real) | outcome | user turns answered | answers sent by the server "
             "| duplicated | lost | reconnects (why) | re-sends | time to recover, s | re-sent turn answered after, s "
             "| session, s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"

    for r in rows:
        why = f" ({r['reasons']})" if r["reasons"] else ""
        lines.append(f"| {r['name']} | {r['what']} | {r['outcome']} | {r['answered']}/{r['activities']} | "
                     f"{r['server_answers']} | {r['duplicated']} | {r['lost']} | {r['reconnects']}{why} | "
                     f"{r['resends']} | {f(r['recover_s'])} | {f(r['answer_s'])} | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def main() -> int:
    ap = arg_parser(__doc__)
    ap.add_argument("--concurrency", type=int, default=4, help="sessions at once (default %(default)s)")
    args = ap.parse_args()
    samples = candidate()

    async def go(root: Path) -> list[dict[str, Any]]:
        gate = asyncio.Semaphore(args.concurrency)

        async def gated(name: str) -> dict[str, Any]:
            async with gate:
                return await one(name, root, samples)

        return list(await asyncio.gather(*(gated(name) for name in SCENARIOS)))

    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp:
        rows = asyncio.run(go(Path(tmp)))
    body = (
        f"{len(rows)} sessions, {args.concurrency} at a time, one emulator each (profile real), the bundled "
        "candidate track (24.7 s, 3 user turns) with DTX and the greeting; the bridge's default recovery "
        "settings unless the scenario says otherwise. Duplicated / lost: the emulator's `duplicate_turn` / "
        "`lost_turn` flags. Answers sent by the server count re-answers of a re-sent turn and interrupted "
        "answers (not empty ones; the turn table counts an empty turnComplete as answered). User turns: the "
        "activities the detector made on this run (3 on an idle machine; sessions share 2 cores with other "
        "work, and under load a turn can split). Time to recover: first reconnect decision to the new "
        "connection's setup (for a give-up: first ActivityEnd to the give-up); re-sent turn answered after: "
        "the same decision to the first turn_complete of a re-sent turn."
        "\n\n" + table(rows))
    publish(TITLE, section(TITLE, body), args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
