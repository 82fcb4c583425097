"""Dask batch (``rewardscope batch``): frames/s in one process vs a LocalCluster of 1 and 2
workers, on the same sessions in the same run, and peak RSS per worker on one long session.

Throughput: ``--sessions`` image-folder sessions of ``--per-session`` simulated 128² frames
(workflow ``atoms`` by default, budgets 3 cold 5), processed three times into fresh folders:
in this process (the baseline), on ``local:1`` and on ``local:2``. The cluster's start-up is
timed apart (it is paid once per batch, not per frame). The ratio is frames/s over the
baseline's; the results are checked identical (same seed) across the three.

Memory: one stored session (a ``frames.rsrec`` of ``--frames`` frames, 1,000 in the full run)
and a short one (a tenth of it) each on a fresh ``local:1`` worker; the worker's peak RSS
(``VmHWM``, its own address space's high-water mark) is read after each. Frames stream from
disk, so the long session's peak should be the short one's, not ten times it. Not
``ru_maxrss``: Linux carries the parent's peak across fork + exec, so a worker started by a
benchmark process that had analysed 2048² frames reported that process's peak (4.4 GB).

    python -m benchmarks batch [-- --quick] [--frames 1000] [--sessions 4 --per-session 24]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from rewardscope import protocol
from rewardscope.cli.batch import run_batch
from rewardscope.live.cluster import Cluster, warmup_once
from rewardscope.simulators.perovskite import PerovskiteSimulator, SimConfig
from rewardscope.storage.sessions import SessionStore, session_path

SHAPE = (128, 128)


def _settings(workflow: str) -> dict[str, Any]:
    return {"workflow": workflow, "budget": 3, "cold_budget": 5, "seed": 0, "eval_workers": 1}


def _image_sessions(root: Path, sessions: int, per_session: int) -> list[str]:
    out = []
    for k in range(sessions):
        folder = root / f"s{k}"
        folder.mkdir(parents=True)
        sim = PerovskiteSimulator(SimConfig(shape=SHAPE, noise_sigma=0.1, seed=k))
        for i in range(per_session):
            np.save(folder / f"f{i:04d}.npy", sim.frame(i).pixels)
        out.append(str(folder))
    return out


def _stored_session(root: Path, name: str, frames: int) -> str:
    """A session store folder of ``frames`` frames, written one message at a time."""
    store = SessionStore(root)
    sim = PerovskiteSimulator(SimConfig(shape=SHAPE, noise_sigma=0.1, seed=7,
                                        drift_px_per_frame=(0.05, 0.03)))
    for i in range(frames):
        store.frame_message(name, protocol.encode_frame(sim.frame(i).pixels, session=name,
                                                        seq=i, t=float(i)))
    store.close()
    return str(session_path(root, name))


def _results(root: Path) -> dict[str, Any]:
    out = {}
    for f in sorted(root.glob("*/[0-9]*.json")):
        doc = json.loads(f.read_text())
        doc.pop("elapsed_s")
        doc.pop("optimizer_s")
        out[f"{f.parent.name}/{f.name}"] = doc
    return out


def _peak_rss_mb() -> float:
    """This process's peak resident set, MB: ``VmHWM`` where /proc has it (the peak of this
    address space, reset at exec), else ``ru_maxrss``, which on Linux also counts the peak a
    parent had when it started this process."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    scale = 1024.0 if sys.platform == "darwin" else 1.0  # macOS: bytes; Linux: KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0 / scale


def throughput(work: Path, inputs: list[str], settings: dict[str, Any]) -> list[dict]:
    rows = []
    base = None
    ref = None
    for workers in (0, 1, 2):
        out = work / f"out{workers}"
        startup = 0.0
        if workers == 0:
            warmup_once()  # as the workers are below: numba kernels loaded before the clock
            report = run_batch(inputs, out, settings, export=False)
        else:
            t0 = time.perf_counter()
            cluster = Cluster(f"local:{workers}").start()
            cluster.client.run(warmup_once)
            startup = time.perf_counter() - t0
            try:
                report = run_batch(inputs, out, settings, client=cluster.client, export=False)
            finally:
                cluster.close()
        rate = report.done / report.seconds
        base = rate if base is None else base
        res = _results(out)
        ref = res if ref is None else ref
        rows.append({"executor": "one process" if workers == 0 else f"local:{workers}",
                     "workers": workers, "frames": report.done,
                     "seconds": round(report.seconds, 2), "startup_s": round(startup, 2),
                     "frames_per_s": round(rate, 3), "ratio": round(rate / base, 2),
                     "identical": res == ref, "failed": len(report.failed)})
    return rows


def memory(work: Path, frames: int, settings: dict[str, Any]) -> list[dict]:
    rows = []
    for n in (max(2, frames // 10), frames):
        src = _stored_session(work / f"store{n}", f"long{n}", n)
        out = work / f"mem{n}"
        with Cluster("local:1") as cluster:
            report = run_batch([src], out, settings, client=cluster.client, export=True)
            peak = cluster.client.run(_peak_rss_mb)
        rows.append({"frames": n, "done": report.done, "failed": len(report.failed),
                     "seconds": round(report.seconds, 1),
                     "frames_per_s": round(report.done / report.seconds, 3),
                     "peak_rss_mb": round(max(peak.values()), 1),
                     "input_mb": round(sum(p.stat().st_size for p in Path(src).iterdir())
                                       / 2**20, 1)})
    rows[1]["rss_ratio_vs_short"] = round(rows[1]["peak_rss_mb"] / rows[0]["peak_rss_mb"], 2)
    return rows


def run(quick: bool = False, *, frames: int | None = None, sessions: int | None = None,
        per_session: int | None = None, workflow: str = "atoms") -> dict[str, Any]:
    """Measure and print; returns ``{"rows": throughput rows, "memory": rows, ...}``.

    Parameters
    ----------
    quick : bool
        Small sizes (2 sessions x 4 frames, a 60-frame long session): about a minute.
    frames : int, optional
        Frames of the long session (default 1,000; 60 when quick).
    sessions, per_session : int, optional
        The throughput sessions (default 4 x 24; 2 x 4 when quick). A 128² ``atoms`` frame
        takes ~15 ms: 24 frames (~0.4 s) were mostly the workers' own cold start (each
        imports the package and loads its cached kernels, ~1 s, inside the timed run; the
        one-process baseline runs in this warm process); 96 frames are ~1.5-2 s each way.
    workflow : str
        The workflow setting (default ``atoms``).
    """
    frames = frames or (60 if quick else 1000)
    sessions = sessions or (2 if quick else 4)
    per_session = per_session or (4 if quick else 24)
    settings = _settings(workflow)
    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    try:
        inputs = _image_sessions(work / "in", sessions, per_session)
        rows = throughput(work, inputs, settings)
        mem = memory(work, frames, settings)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"batch throughput: {sessions} sessions x {per_session} frames of {SHAPE[0]}², "
          f"workflow {workflow}, budgets 3/5 (same run; ratio vs one process)")
    print(f"{'executor':<12} {'frames':>6} {'s':>7} {'start s':>7} {'frames/s':>9} "
          f"{'ratio':>6} {'identical':>9}")
    for r in rows:
        print(f"{r['executor']:<12} {r['frames']:>6} {r['seconds']:>7.2f} {r['startup_s']:>7.2f} "
              f"{r['frames_per_s']:>9.3f} {r['ratio']:>5.2f}x {str(r['identical']):>9}")
    print("peak RSS of one local:1 worker per stored session (frames stream from disk)")
    print(f"{'frames':>6} {'input MB':>8} {'s':>7} {'frames/s':>9} {'peak RSS MB':>11}")
    for r in mem:
        print(f"{r['frames']:>6} {r['input_mb']:>8.1f} {r['seconds']:>7.1f} "
              f"{r['frames_per_s']:>9.3f} {r['peak_rss_mb']:>11.1f}")
    print(f"long / short session peak RSS: {mem[1]['rss_ratio_vs_short']:.2f}x")
    return {"rows": rows, "memory": mem, "shape": list(SHAPE), "workflow": workflow,
            "sessions": sessions, "per_session": per_session, "frames": frames}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks batch")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--frames", type=int, default=None, help="frames of the long session")
    p.add_argument("--sessions", type=int, default=None)
    p.add_argument("--per-session", type=int, default=None)
    p.add_argument("--workflow", default="atoms")
    a = p.parse_args(argv)
    res = run(a.quick, frames=a.frames, sessions=a.sessions, per_session=a.per_session,
              workflow=a.workflow)
    return 0 if all(r["identical"] and not r["failed"] for r in res["rows"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
