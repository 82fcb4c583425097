"""The benchmark suite (``make bench``): every comparison side by side in one run, as ratios, with
the machine described; writes ``benchmarks/results/<date>.md`` and ``.json``.

Sections (each calls the benchmark module that owns it; a section that fails is reported in
the table and the others still run):

* ``log``: LoG atom finder vs ``skimage.feature.blob_log``, 256² to 2048², time and F1 of each
  (``bench_log``);
* ``kernels``: every numba kernel vs its numpy reference twin (``bench_kernels``);
* ``pipeline``: per-frame workflow ``all`` warm vs the seeds' way (blob_log + GMM + cold
  gp_minimize, 20 calls per workflow), 384² and 1024², time, F1, ARI, IoU (``bench_pipeline``);
* ``scaling``: warm cost vs frame size and atom count, fitted exponents (``bench_scaling``);
* ``ingest``: frames/s and MB/s through ZeroMQ on loopback into a real daemon, 512² uint16
  and 2048² float32, analysis off and on (``bench_ingest``);
* ``batch``: Dask batch frames/s, 1 and 2 workers vs one process (``bench_batch.run(quick)``,
  when that module exists);
* ``cold``: cold ``rewardscope analyze`` vs the seeds' way, both from the shell (``bench_cold``).

``--quick`` (a few minutes on 2 cores) runs smaller sizes and fewer repeats and writes
``<date>-quick.md``/``.json``.

    python -m benchmarks suite [-- --quick] [--only log kernels] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = ("log", "kernels", "pipeline", "scaling", "ingest", "batch", "cold")


# ------------------------------------------------------------------------------ the machine

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return float("nan")


def _gpu() -> str:
    """The GPU torch sees, or "none" (asked in a subprocess: torch stays out of this one)."""
    code = ("import torch\n"
            "print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "none (torch not importable)"


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() + (" (uncommitted changes)" if dirty.stdout.strip() else "")


def host_speed() -> dict[str, float]:
    """Two fixed workloads timed now: a pure-Python loop (3e6 integer additions, s) and a
    1000 x 1000 float32 matrix product on one BLAS thread (GFLOP/s).

    Why: this kind of shared 2-core machine has run the same code ~2x apart on different
    days; ratios within a run compare fairly, absolute times across runs only with these
    beside them (measured at the start and the end of the run: drift within it shows too).
    """
    from threadpoolctl import threadpool_limits

    t0 = time.perf_counter()
    total = 0
    for i in range(3_000_000):
        total += i
    loop = time.perf_counter() - t0
    a = np.random.default_rng(0).random((1000, 1000), dtype=np.float32)
    with threadpool_limits(1, user_api="blas"):
        a @ a
        t0 = time.perf_counter()
        for _ in range(5):
            a @ a
        dt = (time.perf_counter() - t0) / 5
    return {"python_loop_s": round(loop, 3), "sgemm_gflops": round(2e9 / dt / 1e9, 1)}


def machine(probe_gpu: bool = True) -> dict[str, Any]:
    """Cores, CPU model, memory, GPU (if torch sees one), Python and library versions.

    ``probe_gpu=False`` skips starting torch (a few seconds) and reports "not probed".
    """
    import numba
    import skimage
    import sklearn

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "usable_cores": usable,
            "memory_gb": _memory_gb(),
            "gpu": _gpu() if probe_gpu else "not probed", "os": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "scikit-learn": sklearn.__version__,
            "scikit-image": skimage.__version__, "commit": _git_commit(),
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
            "host_speed_at_start": host_speed()}


# ------------------------------------------------------------------------------ sections

def section_log(quick: bool) -> dict[str, Any]:
    from benchmarks import bench_log
    from rewardscope.science.atomfind import warmup

    warmup()
    sizes, repeat = ([256, 512], 1) if quick else ([256, 512, 1024, 2048], 3)
    rows = []
    for size in sizes:
        r = bench_log.bench_size(size, 2 if size >= 2048 and not quick else repeat)
        r["x_cold"] = r["blob_log_s"] / r["cold_s"]
        r["x_cold_1t"] = r["blob_log_s"] / r["cold_1t_s"]
        r["x_cached"] = r["blob_log_s"] / r["cached_s"]
        rows.append(r)
    out: dict[str, Any] = {"rows": rows}
    if len(rows) >= 2:
        from benchmarks.bench_scaling import exponent

        px = [r["size"] ** 2 for r in rows]
        out["exponent_pixels"] = {"blob_log": exponent(px, [r["blob_log_s"] for r in rows]),
                                  "ours_cold": exponent(px, [r["cold_s"] for r in rows])}
    return out


def section_kernels(quick: bool) -> dict[str, Any]:
    from benchmarks import bench_kernels

    return {"rows": bench_kernels.run(scale=1.0, repeat=2 if quick else 5)}


def section_pipeline(quick: bool) -> dict[str, Any]:
    from benchmarks import bench_pipeline
    from rewardscope.engine import warmup

    warmup()
    rows = []
    for size in ([384] if quick else [384, 1024]):
        # ours: 11 frames (10 warm: a median and p90 worth quoting); the seeds' way runs once
        rows += bench_pipeline.run_size(size, 3 if quick else 11, 20, "all")
    return {"rows": rows}


def section_scaling(quick: bool) -> dict[str, Any]:
    from benchmarks import bench_scaling

    return bench_scaling.run(quick)


def section_ingest(quick: bool) -> dict[str, Any]:
    from benchmarks import bench_ingest

    return {"rows": bench_ingest.run(quick)}


def section_batch(quick: bool) -> dict[str, Any]:
    """``benchmarks/bench_batch.py``'s ``run(quick) -> dict``, when that module exists."""
    try:
        mod = importlib.import_module("benchmarks.bench_batch")
    except ModuleNotFoundError as exc:
        if exc.name != "benchmarks.bench_batch":
            raise
        return {"skipped": "benchmarks/bench_batch.py is not there yet"}
    res = mod.run(quick)
    return res if isinstance(res, dict) else {"rows": list(res)}


def section_cold(quick: bool) -> dict[str, Any]:
    from benchmarks import bench_cold

    return {"rows": [bench_cold.run(384, repeat=2 if quick else 5)]}


RUNNERS: dict[str, Callable[[bool], dict[str, Any]]] = {
    "log": section_log, "kernels": section_kernels, "pipeline": section_pipeline,
    "scaling": section_scaling, "ingest": section_ingest, "batch": section_batch,
    "cold": section_cold,
}


def run(quick: bool = False, only: list[str] | None = None,
        progress: Callable[[str], None] | None = None, probe_gpu: bool = True
        ) -> dict[str, Any]:
    """Run the chosen sections (default all) and return the whole report as plain data.

    Parameters
    ----------
    quick : bool
        Smaller sizes and fewer repeats.
    only : list of str, optional
        Section names, a subset of :data:`SECTIONS`.
    progress : callable, optional
        Called with a line of text as each section starts and ends.
    probe_gpu : bool
        Ask torch, in a subprocess, which GPU it sees (see :func:`machine`).
    """
    chosen = list(only or SECTIONS)
    bad = [s for s in chosen if s not in RUNNERS]
    if bad:
        raise ValueError(f"only: unknown sections {bad}; choose from {list(SECTIONS)}")
    say = progress or (lambda _line: None)
    report: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full", "machine": machine(probe_gpu), "sections": {}}
    for name in chosen:
        say(f"[{name}] ...")
        t0 = time.perf_counter()
        environ = dict(os.environ)
        try:
            res = RUNNERS[name](quick)
        except Exception as exc:  # one failing comparison must not lose the others
            res = {"error": f"{type(exc).__name__}: {exc}",
                   "traceback": traceback.format_exc(limit=8)}
        finally:  # a section's environment (a library's settings) must not reach the next
            os.environ.clear()
            os.environ.update(environ)
        res["seconds"] = round(time.perf_counter() - t0, 1)
        report["sections"][name] = res
        say(f"[{name}] {res['seconds']} s" + (f"  ERROR {res['error']}" if "error" in res
                                               else ""))
    report["machine"]["host_speed_at_end"] = host_speed()
    return report


# ------------------------------------------------------------------------------ markdown

def _f(v: Any, fmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    numeric = isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
    return format(v, fmt) if fmt and numeric else str(v)


def table(rows: list[dict[str, Any]], cols: list[tuple[str, str, str]]) -> str:
    """A markdown table of ``rows``; ``cols`` are (header, key, format spec)."""
    lines = ["| " + " | ".join(h for h, _, _ in cols) + " |",
             "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_f(r.get(k), fmt) for _, k, fmt in cols) + " |")
    return "\n".join(lines)


COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "log": [("size", "size", "d"), ("true atoms", "n_true", "d"),
            ("blob_log s", "blob_log_s", ".3f"), ("ours cold s", "cold_s", ".3f"),
            ("ours cold 1 thread s", "cold_1t_s", ".3f"), ("ours cached s", "cached_s", ".4f"),
            ("x cold", "x_cold", ".1f"), ("x cold 1 thread", "x_cold_1t", ".1f"),
            ("x cached", "x_cached", ".0f"), ("F1 blob_log", "f1_blob_log", ".3f"),
            ("F1 ours", "f1_ours", ".3f")],
    "kernels": [("kernel", "kernel", ""), ("input", "input", ""),
                ("numpy reference s", "reference_s", ".5f"), ("numba s", "numba_s", ".5f"),
                ("x", "ratio", ".1f"), ("agree", "agree", "")],
    "pipeline": [("size", "size", "d"), ("seeds' way s/frame", "seeds_s", ".2f"),
                 ("ours warm s/frame (median)", "ours_s", ".3f"), ("p90", "ours_p90_s", ".3f"),
                 ("x", "ratio", ".1f"),
                 ("F1 seeds", "seeds_F1", ".3f"), ("F1 ours", "ours_F1", ".3f"),
                 ("ARI seeds", "seeds_ARI", ".3f"), ("ARI ours", "ours_ARI", ".3f"),
                 ("IoU seeds", "seeds_IoU", ".3f"), ("IoU ours", "ours_IoU", ".3f")],
    "scaling": [("size", "size", "d"), ("lattice px", "lattice_px", ".0f"),
                ("atoms", "atoms", "d"), ("warm s/frame", "warm_s", ".3f")],
    "ingest": [("frame", "frame", ""), ("MB/frame", "MB_per_frame", ".2f"),
               ("analysis", "analysis", ""), ("sent", "sent", "d"),
               ("accepted", "accepted", "d"), ("analysed", "analysed", "d"),
               ("accepted frames/s", "frames_per_s", ".1f"), ("MB/s", "MB_per_s", ".0f"),
               ("analysed frames/s", "analysed_per_s", ".2f")],
    "cold": [("size", "size", "d"), ("analyze s (median)", "ours_s", ".2f"),
             ("analyze s (first)", "ours_first_s", ".2f"), ("evaluations", "n_evaluations", "d"),
             ("of which analysis s", "analysis_s", ".2f"), ("seeds' way s", "seeds_s", ".2f"),
             ("x", "ratio", ".1f"), ("no pictures s", "bare_s", ".2f"),
             ("x no pictures", "bare_ratio", ".1f"), ("F1 ours", "ours_F1", ".3f"),
             ("F1 seeds", "seeds_F1", ".3f"), ("ARI ours", "ours_ARI", ".3f"),
             ("ARI seeds", "seeds_ARI", ".3f"), ("IoU ours", "ours_IoU", ".3f"),
             ("IoU seeds", "seeds_IoU", ".3f")],
}

TITLES = {
    "log": "LoG atom finder vs skimage.feature.blob_log (x = blob_log time / ours; F1 vs "
           "simulator truth within 0.25 lattice spacings)",
    "kernels": "numba kernels vs their numpy reference twins (tests/references.py; x = numpy "
               "time / numba time; the references are the plain specification, not tuned "
               "numpy)",
    "pipeline": "per frame, workflow all: ours warm (median, budget 8 per workflow) vs the "
                "seeds' way (blob_log + GMM + cold gp_minimize, 20 calls per workflow), same "
                "frames (x = seeds / ours)",
    "scaling": "warm cost vs frame size (12 px lattice) and atom count (fixed size)",
    "ingest": "ZeroMQ loopback ingest into a real daemon (paused = ingest alone; atoms = "
              "analysing the latest frame meanwhile)",
    "batch": "Dask batch (bench_batch)",
    "cold": "cold `rewardscope analyze` vs the seeds' way script, both from the shell, same "
            "frame (x = seeds / analyze)",
}


def _generic_rows(res: dict[str, Any]) -> str:
    """A section of unknown shape: one table per list of rows, the other values as JSON."""
    parts, rest = [], {}
    for key, rows in res.items():
        if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
            keys = list(dict.fromkeys(k for r in rows for k in r))
            fmt = {k: ".3g" if any(isinstance(r.get(k), float) for r in rows) else ""
                   for k in keys}
            parts += [f"{key}:", "", table(rows, [(k, k, fmt[k]) for k in keys]), ""]
        elif key != "seconds":
            rest[key] = rows
    if rest:
        parts.append("```\n" + json.dumps(rest, indent=1, default=str) + "\n```")
    return "\n".join(parts).rstrip()


def _speed_line(m: dict[str, Any]) -> str:
    """The host-speed probes (:func:`host_speed`) as a sentence; absent in older reports."""
    parts = [f"{when}: Python loop {v['python_loop_s']} s, float32 matmul "
             f"{v['sgemm_gflops']} GFLOP/s" for when, v in
             (("at start", m.get("host_speed_at_start")), ("at end", m.get("host_speed_at_end")))
             if v]
    if not parts:
        return ""
    return ("Host speed (3e6 Python additions; 1000² float32 product on one thread; compare "
            "absolute times across runs with these) " + "; ".join(parts) + ".")


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: machine, then one table per section."""
    m = report["machine"]
    out = [f"# Benchmarks {report['date'][:10]} ({report['mode']})", "",
           f"Run {report['date']}, commit {m['commit']}. Machine: {m['cpu']}, {m['cores']} cores "
           f"({m['usable_cores']} usable), {m['memory_gb']} GB, GPU: {m['gpu']}; "
           f"{m['os']}, Python {m['python']}, numpy {m['numpy']}, numba {m['numba']}, "
           f"scikit-learn {m['scikit-learn']}, scikit-image {m['scikit-image']}. "
           f"Load average at start: {m['load_avg_at_start']}.", "",
           _speed_line(m), "",
           "Every ratio compares two things measured side by side in this run.", ""]
    for name, res in report["sections"].items():
        out += [f"## {name}: {TITLES.get(name, name)}", ""]
        if "error" in res:
            out += [f"**failed**: `{res['error']}`", ""]
            continue
        if "skipped" in res:
            out += [f"skipped: {res['skipped']}", ""]
            continue
        if name == "scaling":
            out += [table(res["by_size"] + res["by_atoms"], COLUMNS["scaling"]), "",
                    f"time ~ pixels^{res['exponent_pixels']:.2f} at a 12 px lattice; "
                    f"time ~ atoms^{res['exponent_atoms']:.2f} at a fixed frame size "
                    f"(workflow {res['workflow']}, np.polyfit on log-log)."]
        elif name in COLUMNS:
            out.append(table(res["rows"], COLUMNS[name]))
            if name == "log" and "exponent_pixels" in res:
                e = res["exponent_pixels"]
                out += ["", f"time ~ pixels^{e['blob_log']:.2f} (blob_log), "
                            f"^{e['ours_cold']:.2f} (ours cold)."]
        else:
            out.append(_generic_rows(res))
        out += ["", f"({res['seconds']} s)", ""]
    return "\n".join(out).rstrip() + "\n"


def write(report: dict[str, Any], out_dir: Path = RESULTS) -> tuple[Path, Path]:
    """Write ``<date>[-quick].md`` and ``.json`` under ``out_dir``; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = report["date"][:10] + ("-quick" if report["mode"] == "quick" else "")
    md, js = out_dir / f"{stem}.md", out_dir / f"{stem}.json"
    md.write_text(markdown(report))
    js.write_text(json.dumps(report, indent=1, default=_plain) + "\n")
    return md, js


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks suite", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few minutes: smaller, fewer")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, help="sections to run")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for the .md and .json")
    args = ap.parse_args(argv)
    from rewardscope import logs

    logs.setup("ERROR", "text")
    report = run(args.quick, args.only, progress=lambda line: print(line, flush=True))
    md, js = write(report, args.out)
    print(md.read_text())
    print(f"wrote {md} and {js}")
    return 1 if any("error" in s for s in report["sections"].values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
