"""End-of-turn latency: true speech end -> ActivityEnd on the wire, with and without frames stopping in silence.

Run:  .venv/bin/python bench/bench_session.py [--write] [--sessions N]

Each session plays the bundled candidate track (3 labelled answers) through a loopback WebRTC link
into ``bridge.run_session`` on uvloop (as ``workbench run`` runs), against ``workbench emulator`` in
its own process; ``--sessions`` with Opus DTX (frames stop in silence) and as many without.

Lateness = ActivityEnd on the wire (``send`` ``stage == "wire"``) − arrival of the last speech
frame before it (the track is digital silence between the labelled answers, so a speech frame is
one above -70 dBFS) − the silence window.  From the true end = ActivityEnd on the wire − the
labelled end of the answer on the session clock (media time placed by the median frame's delay,
the jitter buffer's steady delay included) − the silence window: the end-of-turn figure, its
target p95 ≤ 40 ms.  Tail missing = the labelled
end − the media end of the last speech frame that arrived before ActivityEnd (what the jitter
buffer kept from the turn).  Per-session CPU is measured by ``bench_load.py`` (a
process holding only the bridge side), not here, where the file players share the process.
``--write`` replaces the "## End-of-turn latency" section.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import CANDIDATE, OUT, ExternalEmulator, pct, publish, section  # noqa: E402

import workbench  # noqa: E402
from workbench.core.params import TurnParams  # noqa: E402
from workbench.core.pcm import to_int16  # noqa: E402
from workbench.io import (
    bridge,  # noqa: E402
    eventloop,
    live,
)
from workbench.store.audiofile import load_mono

TITLE = "End-of-turn latency"
# Kept in the section when it is rewritten: the figures before the jitter buffer's tail was released.
HISTORY = (
    "Before `LoopDecoder.release` (2026-12-01, the same script on the code of commit 42e5eae, 2 sessions each): "
    "with DTX the tail missing was 77 ms median (79 max) and ActivityEnd came −76 ms median from the true end "
    "(p95 −75): the turn ended on a media end ~80 ms early, and those ~80 ms were dropped as late frames after "
    "its ActivityEnd; without DTX −8 ms median (p95 13), as now. The release makes ActivityEnd ~80 ms later under "
    "DTX on the wall clock, because the bridge now knows where the speech really ended."
    " An earlier run of this version the same hour had one DTX turn 349 ms late (the rest as here); its recording "
    "was overwritten before it could be examined, and the run above did not show it."
)
LATE_TARGET_MS = 40.0
SPEECH_DB = -70.0


def first_sent_s(audio: np.ndarray, dtx: bool) -> float:
    """Source time of received pts 0: the first frame the player sends (under DTX, the first non-silent one)."""
    if not dtx:
        return 0.0
    frames = audio[: audio.size // 960 * 960].reshape(-1, 960)
    return float(np.flatnonzero(frames.any(axis=1))[0] * 0.02)


def end_of_turn_ms(rec: workbench.Recording, label_ends: list[float], pts0_s: float) -> dict[str, list[float]]:
    """Per labelled answer: ActivityEnd − true end − silence window, and how much of the answer's end was not
    received before that ActivityEnd (ms); ``pts0_s`` is the source time of received pts 0."""
    snd = rec.of_kind("send")
    ae = np.sort(snd[(snd["msg"] == "activity_end") & (snd["stage"] == "wire")]["t"].to_numpy())
    fr = rec.of_kind("frame")
    t, pts = fr["t"].to_numpy(), fr["pts_s"].to_numpy()
    # Session time of pts 0 as most frames see it (the jitter buffer's steady delay included, as the pipeline's
    # media_offset has it); not the minimum: one mislabelled frame a burst (webrtc.py) sits 20-30 ms off.
    offset = float(np.median(t - pts))
    speech = fr["level_db"].to_numpy() > SPEECH_DB
    silence_s = rec.meta["params"]["silence_ms"] / 1000
    out: dict[str, list[float]] = {"from_end": [], "missing": []}
    for end in label_ends:
        end_session = end - pts0_s + offset
        after = ae[ae > end_session]
        if not after.size:
            continue
        got = speech & (t < after[0]) & (pts < end - pts0_s + 0.05)
        out["from_end"].append(float((after[0] - end_session - silence_s) * 1000))
        out["missing"].append(float((end - pts0_s - (pts[got].max() + 0.02)) * 1000) if got.any() else float("nan"))
    return out


def lateness_ms(rec: workbench.Recording) -> list[float]:
    """Per ActivityEnd on the wire: its time − the last speech frame's arrival before it − the silence window.

    The candidate track is digital silence between answers, so a speech frame is one above
    ``SPEECH_DB``; frames are timed by arrival on the session clock (what the bridge can act on).
    """
    snd = rec.of_kind("send")
    ae = np.sort(snd[(snd["msg"] == "activity_end") & (snd["stage"] == "wire")]["t"].to_numpy())
    fr = rec.of_kind("frame")
    speech_t = np.sort(fr[fr["level_db"] > SPEECH_DB]["t"].to_numpy())
    silence_s = rec.meta["params"]["silence_ms"] / 1000
    out = []
    for t in ae:
        before = speech_t[speech_t < t]
        out.append(float((t - before[-1] - silence_s) * 1000) if before.size else float("nan"))
    return out


async def sessions(n: int, audio: np.ndarray, labels: list[tuple[float, float]]) -> dict[str, object]:
    """Run ``n`` sessions per DTX setting; lateness per turn (``labels`` counts the turns)."""
    res: dict[str, object] = {"late": {True: [], False: []}, "turns": {True: [0, 0], False: [0, 0]},
                              "from_end": {True: [], False: []}, "missing": {True: [], False: []}}
    shutil.rmtree(OUT / "session", ignore_errors=True)
    with ExternalEmulator() as emu:
        for i in range(n):
            for dtx in (True, False):
                settings = live.LiveSettings(base_url=emu.base_url, ssl_context=emu.ssl_context())
                cfg = bridge.SessionConfig(params=TurnParams(), live=settings, dtx=dtx, name=f"bench-{i}-{dtx}")
                out = OUT / "session" / f"{'dtx' if dtx else 'nodtx'}-{i}"
                r = await bridge.run_session(audio, cfg, out)
                if r.error:
                    raise RuntimeError(f"session {out} failed: {r.error}")
                loaded = workbench.load(out)
                late = lateness_ms(loaded)
                res["late"][dtx] += late  # type: ignore[index]
                eot = end_of_turn_ms(loaded, [b for _a, b in labels], first_sent_s(audio, dtx))
                res["from_end"][dtx] += eot["from_end"]  # type: ignore[index]
                res["missing"][dtx] += eot["missing"]  # type: ignore[index]
                res["turns"][dtx][0] += sum(1 for x in late if x == x)  # type: ignore[index]
                res["turns"][dtx][1] += len(labels)  # type: ignore[index]
                print(f"session {out.name}: late {np.round(late)} from end {np.round(eot['from_end'])} "
                      f"missing {np.round(eot['missing'])}", file=sys.stderr)
    return res


def report(res: dict[str, object], n: int, params: TurnParams) -> str:
    lines = [
        f"{n} sessions with DTX and {n} without, each the bundled candidate track (24.7 s, 3 answers) + 1.5 s "
        f"tail and the greeting, energy detector (silence {params.silence_ms} ms), on uvloop; emulator in its own "
        "process.",
        "",
        "From true end (the end-of-turn figure): ActivityEnd on the wire − the labelled end of the answer on the "
        "session clock (its media time placed by the frames' median delay, the jitter buffer's steady ~80 ms "
        "included, as the bridge places it) − silence window (ms). Tail missing: labelled end − media end of the "
        "last speech frame received before ActivityEnd (ms; negative: the labels end inside the last frame). "
        "Lateness: ActivityEnd on the wire − arrival of the last speech frame before it − silence window (ms). "
        "With DTX aiortc's jitter buffer alone holds the last ~80 ms of each answer until the next burst "
        "(DESIGN.md §6) and the turn ends ~80 ms of media short; `workbench.io.ingest` releases it 50 ms after "
        "packets stop (`LoopDecoder.release`), so the whole answer is sent and the turn ends on its true media "
        "end. Released frames arrive ~30 ms before their steady-state time, which lateness (by arrival) counts "
        "against the bridge; from the true end it is on a par with frames that keep coming.",
        "",
        "| frames in silence | turns | from true end median | p95 | max | target p95 ≤ 40 ms | tail missing median | "
        "max | lateness median | p95 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dtx in (True, False):
        late = [x for x in res["late"][dtx] if x == x]  # type: ignore[index]
        found, total = res["turns"][dtx]  # type: ignore[index]
        from_end = res["from_end"][dtx]  # type: ignore[index]
        p95 = pct(from_end, 95)
        target = ("met" if p95 <= LATE_TARGET_MS else "MISSED") if dtx else "(target is for DTX)"
        missing = [x for x in res["missing"][dtx] if x == x]  # type: ignore[index]
        lines.append(f"| {'stop (DTX)' if dtx else 'keep coming'} | {found}/{total} | {pct(from_end, 50):.0f} | "
                     f"{p95:.0f} | {max(from_end, default=float('nan')):.0f} | {target} | {pct(missing, 50):.0f} | "
                     f"{max(missing, default=float('nan')):.0f} | {pct(late, 50):.0f} | {pct(late, 95):.0f} |")
    return "\n".join([*lines, "", HISTORY])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="update bench/BENCHMARKS.md")
    ap.add_argument("--sessions", type=int, default=3, help="sessions per DTX setting")
    args = ap.parse_args()
    audio = to_int16(load_mono(CANDIDATE, 48_000))
    labels = [(float(a), float(b)) for a, b, *_ in
              (ln.split("\t") for ln in CANDIDATE.with_suffix(".labels.txt").read_text().splitlines() if ln.strip())]
    res = eventloop.run(sessions(args.sessions, audio, labels))
    text = section(TITLE, report(res, args.sessions, TurnParams()))
    publish(TITLE, text, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
