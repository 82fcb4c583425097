"""Ingest through ZeroMQ on loopback: frames/s and MB/s a real daemon accepts, with and without
analysis running.

The loopback rig of the tests (``tests/loopback.py``): a real :class:`InstrumentClient` (PUB)
publishes simulated frames as fast as it can (for 5 s; 1.5 s with ``--quick``) to a real
:class:`Daemon` on 127.0.0.1. "without
analysis": the daemon is paused (``ctl pause``), so every frame is received, decoded, validated
and put in the latest-frame slot, and nothing else. "with analysis": the daemon runs the
``atoms`` workflow on the latest frame meanwhile (warm: the session's first frame is analysed
before the window opens) (frames that arrive during an analysis replace
each other in the slot, by design: counted as ``stale``). Columns: frames sent, accepted,
analysed; accepted frames/s and MB/s over the window from the first send to the last frame
accepted; analysed frames/s over the same window; frames lost on the way (``sent - accepted``,
ZeroMQ high-water marks).

    python -m benchmarks ingest [-- --quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from rewardscope import logs
from rewardscope.simulators.perovskite import PerovskiteSimulator, SimConfig

TESTS = Path(__file__).resolve().parent.parent / "tests"

CASES = [(512, "uint16"), (2048, "float32")]  # (side, pixel type on the wire)


def _rig_class():
    """The tests' loopback rig (``tests/loopback.py``), imported from the checkout."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    from loopback import Rig

    return Rig


def make_frames(side: int, dtype: str, n: int = 2, seed: int = 0) -> list[np.ndarray]:
    """``n`` simulated frames of ``side``² pixels in ``dtype`` (uint16 counts or float32)."""
    sim = PerovskiteSimulator(SimConfig(shape=(side, side), lattice_px=12.0, noise_sigma=0.1,
                                        drift_px_per_frame=(0.5, 0.3), seed=seed))
    return [np.ascontiguousarray(sim.frame(i).pixels.astype(dtype)) for i in range(n)]


def run_case(side: int, dtype: str, duration_s: float, analysis: bool,
             settle_s: float = 2.0) -> dict[str, Any]:
    """Publish frames as fast as possible for ``duration_s``; measure what the daemon accepted
    and analysed.

    Parameters
    ----------
    side : int
        Frame side, px.
    dtype : str
        Pixel type on the wire.
    duration_s : float
        How long to publish, s.
    analysis : bool
        False: the daemon is paused (ingest alone); True: it analyses (workflow ``atoms``).
    settle_s : float
        The window ends when no further frame was accepted for this long, s.
    """
    frames = make_frames(side, dtype)
    rig = _rig_class()(workflow="atoms", lattice_px=12.0)
    try:
        if not analysis:
            rig.control.pause()
        rig.instrument.start_session("bench-ingest")
        time.sleep(0.2)
        d = rig.daemon
        if analysis:  # the session's cold frame first: the window then sees a warm engine
            rig.instrument.send_frame(frames[-1])
            deadline = time.monotonic() + 120
            while d.stats.frames_processed < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
        base_accepted = d.stats.frames_accepted
        base_processed = d.stats.frames_processed
        t0 = time.perf_counter()
        n_frames = 0
        while time.perf_counter() - t0 < duration_s:
            rig.instrument.send_frame(frames[n_frames % len(frames)])
            n_frames += 1
        t_sent = time.perf_counter()
        last, t_last = -1, time.perf_counter()
        while True:
            acc = d.stats.frames_accepted - base_accepted
            now = time.perf_counter()
            if acc != last:
                last, t_last = acc, now
            if acc >= n_frames or now - t_last > settle_s:
                break
            time.sleep(0.002)
        window = max(t_last - t0, 1e-9)
        processed = d.stats.frames_processed - base_processed
    finally:
        rig.close()
    nbytes = frames[0].nbytes
    return {"frame": f"{side}² {dtype}", "MB_per_frame": nbytes / 1e6,
            "analysis": "atoms" if analysis else "off (paused)", "sent": n_frames,
            "accepted": last, "analysed": processed, "lost": n_frames - last,
            "send_s": t_sent - t0, "window_s": window, "frames_per_s": last / window,
            "MB_per_s": last * nbytes / 1e6 / window, "analysed_per_s": processed / window}


def run(quick: bool = False) -> list[dict[str, Any]]:
    """One row per (frame kind, analysis off/on)."""
    logs.setup("ERROR", "text")
    rows = []
    for side, dtype in CASES:
        for analysis in (False, True):
            rows.append(run_case(side, dtype, 1.5 if quick else 5.0, analysis))
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'frame':<15} {'analysis':<13} {'sent':>5} {'accepted':>8} {'analysed':>8} "
            f"{'frames/s':>9} {'MB/s':>8} {'analysed/s':>10}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['frame']:<15} {r['analysis']:<13} {r['sent']:>5} {r['accepted']:>8} "
                     f"{r['analysed']:>8} {r['frames_per_s']:>9.1f} {r['MB_per_s']:>8.1f} "
                     f"{r['analysed_per_s']:>10.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks ingest", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="publish 1.5 s per case, not 5 s")
    args = ap.parse_args(argv)
    print(format_table(run(args.quick)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
