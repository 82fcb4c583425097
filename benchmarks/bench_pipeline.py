"""The seeds' way vs. rewardscope, per frame, same simulated frames, same run.

Seeds' way (Barakati et al. notebooks, done straightforwardly): ``skimage.feature.blob_log``
for atoms, sklearn GMM on raw (un-reduced) patches for domains and amorphous regions, and a
cold ``skopt.gp_minimize`` of 20 calls per workflow per frame on the summed rewards.
rewardscope: FFT LoG with cached scale space, PCA descriptors, ParEGO warm-started from the
previous frame (budget 8 per workflow), the knee of the front.

Quality is measured against the simulator's truth: atom F1 (0.25 a), domain ARI on the
labelled sublattice, amorphous mask IoU. Prints a table; ratios are baseline / ours. ``ours``
is the median (and 90th percentile) wall time of the warm frames with the configured
evaluation workers (``eval_workers`` 0: two on a 2-core host).

``--reference`` also runs, interleaved frame by frame on the same frames (so a busy host
slows both alike), a second engine with this code's speed levers switched off: scikit-learn's
own EM loop instead of the numba kernel (``mixtures.EM_ENGINE``), scikit-learn's GP
likelihood for the hyperparameter refits (``mobo.GP_FIT``) and no re-evaluation skipping
(``session.REUSE_WITHIN_NOISE``); its row is ``ref``.

    python -m benchmarks pipeline [-- --sizes 384 1024 --frames 6 --calls 20 --workflow all
                                      --reference]
"""

from __future__ import annotations

import argparse
import contextlib
import time
import warnings

import numpy as np

from rewardscope import config
from rewardscope.engine import session as session_mod
from rewardscope.engine import warmup
from rewardscope.engine.session import SessionEngine
from rewardscope.optimize import mobo
from rewardscope.science import atomfind, kernels, mixtures, rewards
from rewardscope.science.scoring import labelled_ari, mask_iou, match_points
from rewardscope.simulators.perovskite import PerovskiteSimulator, SimConfig
from rewardscope.workflows import amorphous as amorphous_wf
from rewardscope.workflows.base import FrameContext
from rewardscope.workflows.domains import DomainsWorkflow

LATTICE = 12.0


# ------------------------------------------------------------------------------ truth scores

def atom_f1(xy: np.ndarray, truth) -> float:
    return match_points(xy, truth.atoms, 0.25 * truth.lattice_px).f1


def domain_ari(xy: np.ndarray, labels: np.ndarray, truth) -> float:
    """ARI on the labelled atoms (label >= 0) matched to true atoms."""
    return labelled_ari(xy, labels, truth.atoms, truth.domain, 0.25 * truth.lattice_px)


# ------------------------------------------------------------------------------ the seeds' way

def _gp(func, dims, calls: int, seed: int):
    from skopt import gp_minimize

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gp_minimize(func, dims, n_calls=calls, n_initial_points=min(10, calls),
                           random_state=seed)


def seeds_atoms(image: np.ndarray, calls: int, seed: int) -> np.ndarray:
    from skimage.feature import blob_log
    from skopt.space import Real

    shape = image.shape

    def detect(p):
        lo, hi, thr, ov = p
        b = blob_log(image, min_sigma=lo, max_sigma=max(lo, hi), num_sigma=5, threshold=thr,
                     overlap=ov)
        return b[:, [1, 0]]

    def loss(p):
        xy = detect(p)
        return (rewards.count_quality(len(xy), shape, LATTICE)
                + rewards.implausible_neighbours(xy, shape, LATTICE))

    dims = [Real(0.5, 3.0), Real(1.5, 4.2), Real(0.005, 0.4, prior="log-uniform"),
            Real(0.05, 0.95)]
    res = _gp(loss, dims, calls, seed)
    return detect(res.x)


def seeds_domains(image: np.ndarray, atoms: np.ndarray, calls: int, seed: int
                  ) -> np.ndarray:
    """Raw B-site patches (no PCA) into a GMM; rewards R1 + R2 summed."""
    from skopt.space import Categorical, Integer

    wf = DomainsWorkflow()
    ctx = FrameContext(image=image, lattice_px=LATTICE, atoms=atoms)
    s = wf._sites(ctx)

    def labels_for(p):
        w, k, cov = p
        x = kernels.extract_patches(image, s.xy, int(w), int(w)).reshape(len(s.xy), -1)
        gmm = mixtures.fit_gmm(x, int(k), cov, seed=0, reg_covar=1e-3)
        return gmm.predict(x)

    def loss(p):
        lab = labels_for(p)
        geom = wf.walls(s, lab, LATTICE, image.shape)
        r = wf.score(geom, lab, s, LATTICE, image.shape)
        return r["wall_curvature"] - r["wall_length_per_segment"] / image.shape[0]

    dims = [Integer(5, 15), Integer(2, 4), Categorical(["full", "tied", "diag", "spherical"])]
    res = _gp(loss, dims, calls, seed)
    out = np.full(len(atoms), -1, np.int64)
    out[s.index] = labels_for(res.x)
    return out


def seeds_amorphous(image: np.ndarray, atoms: np.ndarray, calls: int, seed: int) -> np.ndarray:
    """Raw patches at every atom into a 2-component GMM; the component with the dimmest mean
    centre is "disordered"; posterior > threshold paints the atom's Voronoi cell. Rewards:
    normalised perimeter - compactness (summed), as the paper's two shape rewards."""
    from skopt.space import Categorical, Integer, Real

    xy = np.asarray(atoms, dtype=np.float64).reshape(-1, 2)
    owner, dist = amorphous_wf.nearest_site_map(xy, image.shape)
    lo, hi = amorphous_wf._window_bounds(LATTICE)

    def mask_for(p):
        thr, cov, w = p
        x = kernels.extract_patches(image, xy, int(w), int(w)).reshape(len(xy), -1)
        gmm = mixtures.fit_gmm(x, 2, cov, seed=0, reg_covar=1e-3)
        centre = x.shape[1] // 2
        dim = int(np.argmin(gmm.means_[:, centre]))
        flags = gmm.predict_proba(x)[:, dim] > thr
        return amorphous_wf.mask_from_sites(flags, xy, owner, dist, LATTICE, min_sites=3)

    def loss(p):
        m = mask_for(p)
        return min(10.0, rewards.normalised_perimeter(m)) - rewards.region_compactness(m)

    dims = [Real(0.3, 0.99), Categorical(["full", "tied", "diag", "spherical"]),
            Integer(lo, hi)]
    res = _gp(loss, dims, calls, seed)
    return mask_for(res.x)


# ------------------------------------------------------------------------------ the run

@contextlib.contextmanager
def reference_levers():
    """Inside: the speed levers off (scikit-learn EM, scikit-learn GP likelihood, every
    re-evaluation run, the workflows of a wave one after another); the module settings are
    restored on exit."""
    saved = (mixtures.EM_ENGINE, mobo.GP_FIT, session_mod.REUSE_WITHIN_NOISE,
             session_mod.CONCURRENT_WAVES)
    (mixtures.EM_ENGINE, mobo.GP_FIT, session_mod.REUSE_WITHIN_NOISE,
     session_mod.CONCURRENT_WAVES) = "sklearn", "sklearn", False, False
    try:
        yield
    finally:
        (mixtures.EM_ENGINE, mobo.GP_FIT, session_mod.REUSE_WITHIN_NOISE,
         session_mod.CONCURRENT_WAVES) = saved


def _score(a, sf, workflow: str, q: dict) -> None:
    q["F1"].append(atom_f1(a.atoms, sf.truth))
    if workflow in ("domains", "all"):
        q["ARI"].append(domain_ari(a.atoms, a.labels, sf.truth))
    if workflow == "all":
        q["IoU"].append(mask_iou(a.arrays.get("amorphous_mask"), sf.truth.amorphous_mask))


def run_size(size: int, n_frames: int, calls: int, workflow: str,
             reference: bool = False) -> list[dict]:
    amorphous = workflow == "all"
    sim = PerovskiteSimulator(SimConfig(shape=(size, size), lattice_px=LATTICE, noise_sigma=0.15,
                                        drift_px_per_frame=(0.5, 0.3), seed=size,
                                        amorphous_regions=2 if amorphous else 0))
    frames = list(sim.frames(n_frames))
    cfg = config.load(None, {"workflow": workflow, "lattice_px": LATTICE, "budget": 8,
                             "cold_budget": 16, "deadline_s": 60.0})
    engines = {"ours": (SessionEngine("bench", cfg), contextlib.nullcontext)}
    if reference:
        engines["ref"] = (SessionEngine("bench-ref", cfg), reference_levers)
    times = {k: [] for k in engines}
    quals = {k: {"F1": [], "ARI": [], "IoU": []} for k in engines}
    for sf in frames:
        order = list(engines) if sf.index % 2 == 0 else list(engines)[::-1]
        for name in order:  # interleaved, alternating who goes first
            eng, levers = engines[name]
            with levers():
                t0 = time.perf_counter()
                a = eng.analyse(sf.pixels, LATTICE, cfg)
                dt = time.perf_counter() - t0
            if sf.index == 0:
                continue  # the cold frame; live service runs warm from here on
            times[name].append(dt)
            _score(a, sf, workflow, quals[name])
    ours_t, ours_q = times["ours"], quals["ours"]
    sf = frames[-1]
    image = atomfind.normalize_frame(sf.pixels)
    t0 = time.perf_counter()
    xy = seeds_atoms(image, calls, seed=0)
    base_q = {"F1": [atom_f1(xy, sf.truth)], "ARI": [], "IoU": []}
    if workflow in ("domains", "all"):
        labels = seeds_domains(image, xy, calls, seed=0)
        base_q["ARI"].append(domain_ari(xy, labels, sf.truth))
    if amorphous:
        base_q["IoU"].append(mask_iou(seeds_amorphous(image, xy, calls, seed=0),
                                      sf.truth.amorphous_mask))
    base_t = time.perf_counter() - t0
    ours = float(np.median(ours_t))
    row = {"size": size, "workflow": workflow, "seeds_s": base_t, "ours_s": ours,
           "ours_p90_s": float(np.percentile(ours_t, 90)), "ratio": base_t / ours}
    for k in ("F1", "ARI", "IoU"):
        row[f"seeds_{k}"] = float(np.mean(base_q[k])) if base_q[k] else float("nan")
        row[f"ours_{k}"] = float(np.mean(ours_q[k])) if ours_q[k] else float("nan")
    if reference:
        row["ref_s"] = float(np.median(times["ref"]))
        row["ref_p90_s"] = float(np.percentile(times["ref"], 90))
        for k in ("F1", "ARI", "IoU"):
            v = quals["ref"][k]
            row[f"ref_{k}"] = float(np.mean(v)) if v else float("nan")
    return [row]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="seeds' way vs rewardscope per frame")
    p.add_argument("--sizes", type=int, nargs="+", default=[384, 1024])
    p.add_argument("--frames", type=int, default=4, help="frames per size (first is cold)")
    p.add_argument("--calls", type=int, default=20, help="gp_minimize calls per workflow")
    p.add_argument("--workflow", default="domains", choices=("atoms", "domains", "all"))
    p.add_argument("--reference", action="store_true",
                   help="also run the engine with the speed levers off, interleaved (row ref)")
    args = p.parse_args(argv)
    warmup()
    rows = []
    for size in args.sizes:
        rows += run_size(size, args.frames, args.calls, args.workflow, args.reference)
    hdr = (f"{'size':>5} {'workflow':>8} {'seeds s/frame':>13} {'ours s/frame':>12} "
           f"{'p90':>6} {'speed-up':>8} {'F1 seeds':>8} {'F1 ours':>8} {'ARI seeds':>9} "
           f"{'ARI ours':>8} {'IoU seeds':>9} {'IoU ours':>8}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['size']:>5} {r['workflow']:>8} {r['seeds_s']:>13.2f} {r['ours_s']:>12.3f} "
              f"{r['ours_p90_s']:>6.3f} {r['ratio']:>7.1f}x {r['seeds_F1']:>8.3f} "
              f"{r['ours_F1']:>8.3f} {r['seeds_ARI']:>9.3f} {r['ours_ARI']:>8.3f} "
              f"{r['seeds_IoU']:>9.3f} {r['ours_IoU']:>8.3f}")
        if "ref_s" in r:
            print(f"{'':>5} {'ref':>8} {'':>13} {r['ref_s']:>12.3f} {r['ref_p90_s']:>6.3f} "
                  f"{r['ref_s'] / r['ours_s']:>7.2f}x {'':>8} {r['ref_F1']:>8.3f} {'':>9} "
                  f"{r['ref_ARI']:>8.3f} {'':>9} {r['ref_IoU']:>8.3f}")
    print("ours: warm frames (median, p90), budget 8 per workflow; seeds: cold gp_minimize with "
          f"{args.calls} calls per workflow on one frame"
          + ("; ref: the speed levers off, interleaved (its x: ref / ours)"
             if args.reference else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
