"""Quality against truth, one row per case: what the live engine gets right, and how fast.

Each case is one frame through a fresh :class:`SessionEngine` with ``workflow = "all"``, the way
a live session sees its first frame (cold, config defaults, but a 120 s cold deadline so that a
busy machine does not change the answer), then a second frame warm. By default the frame header
carries **no lattice hint and no pixel size** (``--hint`` passes the true spacing); simulated
frames use a 15 px lattice, not the config's 12 px default, so "no hint" is never a silent
perfect hint.

Cases: simulated (``rewardscope.simulators.perovskite``, truth known) clean two-wall stripes,
tilted (lattice rotated 17 deg), noisy (Gaussian noise 0.35 of the A peak), low dose (Poisson,
20 electrons per pixel at the A peak), amorphous (two disordered regions), large (1024^2),
single-domain (no walls); and atomap's two experimental SrTiO3 images (ADF, columns bright; ABF,
columns dark), whose reference is atomap's own refinement (``tests/realimages.py``).

Columns (``-`` where the result lacks what the column reads):

* ``F1``: atoms vs truth (vs atomap for real images), matched within 0.35 of the truth's
  nearest-column spacing, columns half a spacing or more inside the frame;
* ``RMSE px``: root-mean-square distance of the matched columns;
* ``lattice %``: the result's ``lattice`` header field {"a": [dx, dy], "b": [dx, dy]} vs the
  true cell of the A (bright) sublattice, both Lagrange-reduced, worst vector's error;
* ``domains``: adjusted Rand index of the labelled atoms when the truth has several domains,
  else ``k=N``, the number of distinct labels found (1 or 0 is the right answer);
* ``walls``: median distance found -> true / true -> found, in lattice spacings, when the
  truth has walls; else ``none`` or ``N false``;
* ``amorphous``: mask IoU when the truth has an amorphous region, else the false-positive
  area (% of the frame);
* ``pol %``: share of cells whose polarization (result arrays ``polarization``, placed by
  ``cells`` or per atom) lies within 45 deg of the true direction of the nearest column's domain
  (a cell without a finite vector counts as a miss);
* ``cold s`` / ``warm s``: wall time of the first and of the second frame.

    python -m benchmarks quality [-- --quick] [--hint] [--lattice-px 15] [--size 384]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rewardscope import config
from rewardscope.engine import warmup
from rewardscope.engine.session import SessionEngine
from rewardscope.protocol import Frame, FrameHeader
from rewardscope.science.scoring import (
    labelled_ari,
    mask_iou,
    match_points,
    wall_distance_medians,
)
from rewardscope.simulators.perovskite import PerovskiteSimulator, SimConfig

TESTS = Path(__file__).resolve().parent.parent / "tests"
MATCH_FRAC_NN = 0.35  # matching distance, fraction of the truth's nearest-column spacing
MARGIN_FRAC_NN = 0.5  # columns closer than this to the border are not scored
POL_TOLERANCE_DEG = 45.0


@dataclass
class Case:
    """One frame pair (cold, warm) and what is known about it."""

    name: str
    frames: list[np.ndarray]  # wire pixels: the cold frame, then the warm one
    atoms: np.ndarray  # (N, 2) true (or reference) columns of the cold frame, px
    lattice: dict[str, list[float]]  # true cell {"a": [dx, dy], "b": [dx, dy]}, px
    hint_px: float  # what --hint puts in the frame header
    domain: np.ndarray | None = None  # (N,) true domain ids (simulated only)
    walls: list = field(default_factory=list)  # true wall segments
    amorphous: np.ndarray | None = None  # (H, W) true mask (simulated only)
    polarization: np.ndarray | None = None  # (V, 2) true direction per domain id


# ------------------------------------------------------------------------------ cases

def _sim_case(name: str, size: int, lattice_px: float, **overrides) -> Case:
    cfg = SimConfig(shape=(size, size), lattice_px=lattice_px, seed=11, **overrides)
    sim = PerovskiteSimulator(cfg)
    f0, f1 = sim.frame(0), sim.frame(1)
    t = f0.truth
    th = math.radians(t.rotation_deg)
    lat = {"a": [lattice_px * math.cos(th), lattice_px * math.sin(th)],
           "b": [-lattice_px * math.sin(th), lattice_px * math.cos(th)]}
    return Case(name, [f0.pixels, f1.pixels], t.atoms, lat, lattice_px, domain=t.domain,
                walls=list(t.walls), amorphous=t.amorphous_mask, polarization=t.polarization)


def _real_case(name: str) -> Case:
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    import realimages

    from rewardscope.storage.stills import load_image, to_wire_array

    pixels, _meta = load_image(realimages.image_path(name))
    ref = realimages.atomap_reference(name)
    lat = realimages.reference_lattice(name, ref)
    hint = min(math.hypot(*lat["a"]), math.hypot(*lat["b"]))
    wire = to_wire_array(pixels)
    return Case(f"real {name}", [wire, wire], ref, lat, hint)


def cases(quick: bool, size: int, lattice_px: float) -> list[tuple[str, object]]:
    """(name, builder) per case; builders run lazily so the progress bar covers them."""
    s = 256 if quick else size
    sim = {
        "clean": {},
        "tilted": {"rotation_deg": 17.0},
        "noisy": {"noise_sigma": 0.35},
        "low dose": {"dose": 20.0},
        "amorphous": {"amorphous_regions": 2},
        "large": {},
        "single-domain": {"n_walls": 0},
    }
    chosen = ("clean", "noisy", "amorphous", "single-domain") if quick else tuple(sim)
    out: list[tuple[str, object]] = []
    for n in chosen:
        side = 1024 if n == "large" else s
        out.append((f"{n} {side}", lambda n=n, side=side: _sim_case(n, side, lattice_px,
                                                                       **sim[n])))
    for n in ("ADF",) if quick else ("ADF", "ABF"):
        out.append((f"real {n}", lambda n=n: _real_case(n)))
    return out


# ------------------------------------------------------------------------------ scores

def _nn(xy: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    d, _ = cKDTree(xy).query(xy, k=2)
    return float(np.median(d[:, 1]))


def _interior(xy: np.ndarray, shape: tuple[int, int], margin: float) -> np.ndarray:
    h, w = shape
    return ((xy[:, 0] >= margin - 0.5) & (xy[:, 0] <= w - 0.5 - margin)
            & (xy[:, 1] >= margin - 0.5) & (xy[:, 1] <= h - 0.5 - margin))


def _reduce(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Lagrange-Gauss reduction: the two shortest vectors spanning the same lattice."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a @ a > b @ b:
        a, b = b, a
    for _ in range(100):
        b = b - round(float(a @ b) / float(a @ a)) * a
        if b @ b >= a @ a:
            break
        a, b = b, a
    return a, b


def lattice_error_pct(found: dict, truth: dict) -> float:
    """Worst relative error (%) of the reduced cell vectors, up to order and sign."""
    fa, fb = _reduce(found["a"], found["b"])
    ta, tb = _reduce(truth["a"], truth["b"])
    best = math.inf
    for u, v in ((fa, fb), (fb, fa)):
        for su in (1, -1):
            for sv in (1, -1):
                err = max(np.linalg.norm(su * u - ta) / np.linalg.norm(ta),
                          np.linalg.norm(sv * v - tb) / np.linalg.norm(tb))
                best = min(best, float(err))
    return 100.0 * best


def polarization_accuracy_pct(analysis, case: Case) -> float | None:
    """Share (%) of cells within 45 deg of the true direction.

    None when the result or the truth lacks the field, NaN when the result has no cell.
    """
    pol = analysis.arrays.get("polarization")
    if pol is None or case.polarization is None or case.domain is None:
        return None
    pol = np.asarray(pol, np.float64)
    if pol.ndim != 2 or pol.shape[1] != 2:
        return None
    if len(pol) == 0:
        return float("nan")  # the field is there, no cell is
    where = analysis.arrays.get("cells")
    if where is None and len(pol) == len(analysis.atoms):
        where = analysis.atoms
    if where is None:
        return None
    where = np.asarray(where, np.float64)
    if where.ndim != 2 or where.shape[0] != len(pol) or where.shape[1] < 2:
        return None
    from scipy.spatial import cKDTree

    _, i = cKDTree(case.atoms).query(where[:, :2])
    true = case.polarization[np.asarray(case.domain)[i]]
    norm = np.linalg.norm(pol, axis=1) * np.linalg.norm(true, axis=1)
    ok = np.isfinite(norm) & (norm > 0)  # a cell without a vector is not within 45 deg
    cos = np.clip((pol[ok] * true[ok]).sum(1) / norm[ok], -1.0, 1.0)
    within = int(np.sum(np.degrees(np.arccos(cos)) <= POL_TOLERANCE_DEG))
    return 100.0 * within / len(pol)


def score(analysis, case: Case, shape: tuple[int, int]) -> dict[str, str]:
    nn = _nn(case.atoms)
    margin = MARGIN_FRAC_NN * nn
    ours = np.asarray(analysis.atoms, np.float64).reshape(-1, 2)
    inside_true = _interior(case.atoms, shape, margin)
    m = match_points(ours[_interior(ours, shape, margin)], case.atoms[inside_true],
                     MATCH_FRAC_NN * nn)
    row = {"F1": f"{m.f1:.3f}", "RMSE px": f"{m.rmse:.3f}" if m.tp else "-"}
    found = analysis.scalars.get("lattice")
    try:
        row["lattice %"] = f"{lattice_error_pct(found, case.lattice):.1f}"
    except (TypeError, KeyError, ValueError, IndexError):
        row["lattice %"] = "-"
    labels = np.asarray(analysis.labels)
    n_true_domains = 0 if case.domain is None else len(np.unique(case.domain))
    if n_true_domains > 1:
        ari = labelled_ari(ours, labels, case.atoms, case.domain, MATCH_FRAC_NN * nn)
        row["domains"] = f"{ari:.2f}"
    else:
        row["domains"] = f"k={len(np.unique(labels[labels >= 0]))}"
    spacing = min(math.hypot(*case.lattice["a"]), math.hypot(*case.lattice["b"]))
    if case.walls:
        d1, d2 = wall_distance_medians(np.asarray(analysis.walls), np.asarray(case.walls))
        row["walls"] = "missed" if not analysis.walls else f"{d1 / spacing:.2f}/{d2 / spacing:.2f}"
    else:
        row["walls"] = "none" if not analysis.walls else f"{len(analysis.walls)} false"
    mask = analysis.arrays.get("amorphous_mask")
    if case.amorphous is not None and case.amorphous.any():
        row["amorphous"] = f"IoU {mask_iou(mask, case.amorphous):.2f}"
    else:
        area = 0.0 if mask is None else 100.0 * float(np.asarray(mask, bool).mean())
        row["amorphous"] = f"fp {area:.1f}%"
    acc = polarization_accuracy_pct(analysis, case)
    row["pol %"] = "-" if acc is None else "0 cells" if math.isnan(acc) else f"{acc:.0f}"
    return row


# ------------------------------------------------------------------------------ the run

def run_case(case: Case, hint: bool) -> tuple[object, float, float]:
    """(cold Analysis, cold s, warm s) of a fresh engine on the case's two frames."""
    cfg = config.load(None, {"workflow": "all", "cold_deadline_s": 120.0})
    eng = SessionEngine(f"quality-{case.name}", cfg)
    times, results = [], []
    for seq, pixels in enumerate(case.frames):
        header = FrameHeader(session=eng.session, seq=seq, t=float(seq), shape=pixels.shape,
                             dtype=pixels.dtype.str, lattice_px=case.hint_px if hint else None)
        t0 = time.perf_counter()
        results.append(eng.process(Frame(header, pixels), cfg))
        times.append(time.perf_counter() - t0)
    return results[0], times[0], times[1]


COLUMNS = ("case", "F1", "RMSE px", "lattice %", "domains", "walls", "amorphous", "pol %",
           "cold s", "warm s")


def table(rows: list[dict[str, str]]) -> str:
    widths = {c: max(len(c), *(len(r.get(c, "-")) for r in rows)) for c in COLUMNS}
    line = "| " + " | ".join(c.ljust(widths[c]) for c in COLUMNS) + " |"
    rule = "|" + "|".join("-" * (widths[c] + 2) for c in COLUMNS) + "|"
    body = ["| " + " | ".join(r.get(c, "-").ljust(widths[c]) for c in COLUMNS) + " |"
            for r in rows]
    return "\n".join([line, rule, *body])


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    p = argparse.ArgumentParser(prog="python -m benchmarks quality",
                                description="quality against truth, one row per case")
    p.add_argument("--quick", action="store_true",
                   help="256^2 frames, five cases (clean, noisy, amorphous, single-domain, ADF)")
    p.add_argument("--hint", action="store_true",
                   help="put the true lattice spacing in the frame header (default: no hint)")
    p.add_argument("--lattice-px", type=float, default=15.0,
                   help="simulated lattice spacing, px (default 15, not the config's 12)")
    p.add_argument("--size", type=int, default=384, help="simulated frame side (default 384)")
    args = p.parse_args(argv)
    warmup()
    rows: list[dict[str, str]] = []
    failed = 0
    todo = cases(args.quick, args.size, args.lattice_px)
    bar = tqdm(todo, desc="quality", unit="case", file=sys.stderr)
    for name, build in bar:
        bar.set_postfix_str(name)
        try:
            case = build()
            analysis, cold, warm = run_case(case, args.hint)
            row = {"case": name, **score(analysis, case, case.frames[0].shape),
                   "cold s": f"{cold:.2f}", "warm s": f"{warm:.2f}"}
        except Exception as exc:  # a crash is a result too: report it, go on
            failed += 1
            traceback.print_exc(file=sys.stderr)
            row = {"case": name, "F1": f"error: {type(exc).__name__}"}
        rows.append(row)
    bar.close()
    print(table(rows))
    print(f"workflow all, {'true lattice hint' if args.hint else 'no lattice hint'}, "
          f"simulated lattice {args.lattice_px:g} px; quality of the cold frame")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
