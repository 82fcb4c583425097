"""``rewardscope analyze IMAGE``: the live engine's reward-driven analysis, offline, on one image.

Writes ``DIR/result.json`` (atoms, labels, walls, params, rewards, pareto, n_evaluations,
elapsed_s, the workflows' scalars, and for every published array, e.g. ``amorphous_mask``, the
name of the ``.npy`` file holding it), ``DIR/overlay.png`` and ``DIR/pareto.png`` (not with
``--no-pictures``, which also leaves the plotting library unimported). The pictures are drawn by
a second process that imports the plotting library while the analysis runs
(:mod:`rewardscope.cli.painter`), side by side on a machine with two or more cores.
There is no deadline: the budget alone ends each search, so the answer does not depend on
how fast the machine is (or on numba's cache being cold on a first run).
With the latent workflow in the chain, a model is first selected on the image
(:func:`select_latent`, a progress bar over candidates) and the image analysed with it:
``DIR/vae-select.json`` (every candidate with its rewards and status, the chosen one named) and
``DIR/latent.png``. One exception: ``polarization`` names ``polarization_map.npy``, the whole
map as an (M, 4) table x, y, dx, dy in px (cell centres, then B displacements; ``cells.npy``
holds x, y alone).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from rewardscope.cli.painter import Job, Painter
from rewardscope.plaindata import plain


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help=".npy, .tif, .png, .dm3/.dm4/.emd")
    p.add_argument("--lattice-px", type=float, default=None,
                   help="lattice spacing hint in pixels (default: none, the cell is found in "
                        "the frame; a hint the frame contradicts by > 10 %% is reported, not "
                        "used)")
    p.add_argument("--motif", default=None,
                   help="visible columns per unit cell: perovskite-001 (default), "
                        "perovskite-110, perovskite-001-abf, perovskite-110-abf, single, or a "
                        "number")
    p.add_argument("--contrast", choices=("auto", "bright", "dark"), default=None,
                   help="column contrast: bright (HAADF), dark (BF, ABF) or auto (default: "
                        "decided from the frame)")
    p.add_argument("--workflow", default="all",
                   help="atoms|domains|amorphous|all|latent, a comma-separated list, or a "
                        "user workflow as package.module:Class (default all)")
    p.add_argument("--budget", type=int, default=24,
                   help="evaluations per workflow, at most (default 24)")
    p.add_argument("--patience", type=int, default=0,
                   help="end a workflow's search once this many evaluations in a row left its "
                        "answer (the knee) unchanged: ~30 %% faster, same quality on most "
                        "frames, sometimes worse on hard ones (default 0: spend the budget)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-pictures", action="store_true",
                   help="write result.json and the arrays only, no overlay.png / pareto.png "
                        "(and no plotting library is imported)")
    p.add_argument("--latent-candidates", type=int, default=6,
                   help="latent workflow: candidate models trained and compared (default 6)")
    p.add_argument("--latent-epochs", type=int, default=30,
                   help="latent workflow: training epochs per candidate (default 30)")
    p.add_argument("--latent-round-s", type=float, default=300.0,
                   help="latent workflow: time budget of the model search, s (default 300)")


def analyze(image: np.ndarray, lattice_px: float | None = None, *, workflow: str = "all",
            budget: int = 24, patience: int = 0, seed: int = 0, progress: bool = False,
            motif: str | None = None,
            contrast: str | None = None, pixel_size_m: float | None = None):
    """Run the reward-driven chain once with a generous budget; returns (Analysis, seconds).

    ``lattice_px`` is only a hint: the cell is found in the image (result field ``lattice``).
    """
    import gc  # noqa: PLC0415

    from tqdm import tqdm

    gc.disable()  # the scientific stack's imports allocate ~1e6 objects: no collections then
    try:
        from rewardscope import config
        from rewardscope.engine.session import SessionEngine, resolve_chain
    finally:
        gc.freeze()  # and never again: later collections skip the imported modules' objects
        gc.enable()
    # No kernel warm-up: each numba kernel is loaded from numba's cache when first called, so
    # one image pays only for the kernels (and float type) its analysis uses.
    # no deadline: the first run on a machine (numba's cache still cold) and a slow one give
    # the same answer as any other (the cold-frame deadline cut it at 6 s, silently)
    cfg = config.load(None, {"workflow": workflow, "cold_budget": budget, "budget": budget,
                             "patience": patience, "deadline_s": config.NO_DEADLINE_S,
                             "cold_deadline_s": config.NO_DEADLINE_S, "seed": seed,
                             "lattice_px": lattice_px,
                             "motif": motif, "contrast": contrast})
    total = budget * len(resolve_chain(cfg.workflow))
    bar = tqdm(total=total, desc="evaluations", unit="eval", disable=not progress,
               file=sys.stderr)
    eng = SessionEngine("offline", cfg, on_evaluation=lambda wf: bar.set_postfix_str(wf)
                       or bar.update(1))
    t0 = time.perf_counter()
    result = eng.analyse(image, lattice_px, cfg, pixel_size_m=pixel_size_m)
    bar.close()
    return result, time.perf_counter() - t0


def run(args: argparse.Namespace) -> int:
    # the picture process gets ready (imports, fonts) on the other core while this one works
    painter = None if args.no_pictures else Painter()
    try:
        return _run(args, painter)
    finally:
        if painter is not None:
            painter.close()


def _run(args: argparse.Namespace, painter: Painter | None) -> int:
    from rewardscope import config
    from rewardscope.science import atomfind
    from rewardscope.storage.stills import load_image

    try:
        image, _meta = load_image(args.image)
    except (OSError, ValueError) as exc:  # missing, unreadable or not an image: say so
        print(f"rewardscope analyze: cannot read {args.image}: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pictures: list[Job] = []
    try:
        analysis, elapsed = analyze(image, args.lattice_px, workflow=args.workflow,
                                    budget=args.budget, patience=args.patience,
                                    seed=args.seed,
                                    progress=not args.no_progress, motif=args.motif,
                                    contrast=args.contrast,
                                    pixel_size_m=(_meta or {}).get("pixel_size_m"))
    except config.ConfigError as exc:
        print(f"rewardscope analyze: {exc}", file=sys.stderr)
        return 2
    if "keypoints" in analysis.arrays and isinstance(analysis.scalars.get("model"), dict):
        # the latent workflow ran without a model: select one on this image, analyse again
        from rewardscope.science.vae import model_slot

        try:
            best, cands, meta = select_latent(
                image, args.lattice_px, analysis, candidates=args.latent_candidates,
                epochs=args.latent_epochs, round_s=args.latent_round_s, seed=args.seed,
                progress=not args.no_progress)
            (out / "vae-select.json").write_text(json.dumps(
                {**meta, "chosen": None if best is None else best.as_dict()["id"],
                 "candidates": [_finite(c.as_dict()) for c in cands]}, indent=1) + "\n")
            if best is not None:
                analysis, more = analyze(image, args.lattice_px, workflow=args.workflow,
                                         budget=args.budget, patience=args.patience,
                                    seed=args.seed,
                                         progress=not args.no_progress, motif=args.motif,
                                         contrast=args.contrast,
                                         pixel_size_m=(_meta or {}).get("pixel_size_m"))
                elapsed += more
        finally:
            slot_model = model_slot().current()
            model_slot().clear()
        if painter is not None:
            pictures.append(("latent", (_engine_image(image, analysis), analysis,
                                        out / "latent.png")))
        if slot_model is None:
            print("latent: every candidate model was rejected (see vae-select.json); "
                  "nothing latent is claimed", file=sys.stderr)
    if painter is not None:  # drawn while the result is written
        pictures += [("overlay", (atomfind.normalize_frame(image), analysis, out / "overlay.png")),
                     ("pareto", (analysis, out / "pareto.png"))]
        painter.start(pictures)
    write_result(out, analysis, elapsed, image=str(args.image), lattice_px=args.lattice_px,
                 workflow=args.workflow)
    if painter is not None:
        why = painter.wait()
        if why:
            print(f"rewardscope analyze: {why}; pictures drawn in this process",
                  file=sys.stderr)
    print(f"{len(analysis.atoms)} atoms, {len(analysis.walls)} walls, "
          f"{analysis.n_evaluations} evaluations in {elapsed:.1f} s -> {out}/")
    return 0


def write_result(out: Path, analysis, elapsed: float, *, image: str,
                 lattice_px: float | None, workflow: str, name: str = "result.json",
                 prefix: str = "") -> dict:
    """Write one analysis as ``out/name`` (the ``result.json`` keys) plus one ``.npy`` per array.

    The one writer of the ``analyze`` result format (``rewardscope batch`` writes each frame
    with it). Arrays go to ``out/{prefix}{array}.npy`` first, the JSON last and atomically
    (written aside, then renamed), so a JSON file on disk means the frame is complete.

    Parameters
    ----------
    out : Path
        Existing output folder.
    analysis : rewardscope.engine.Analysis
        The chosen analysis of the frame.
    elapsed : float
        Wall time of the analysis, s.
    image, lattice_px, workflow : str, float or None, str
        Recorded as given: the input, the lattice hint (px), the workflow setting.
    name : str
        File name of the JSON document.
    prefix : str
        Prefix of the array files (``""`` for ``analyze``, ``"<seq>."`` for ``batch``).

    Returns
    -------
    dict
        The document written.
    """
    doc = {"image": image, "lattice_px": lattice_px, "workflow": workflow,
           "atoms": analysis.atoms.tolist(), "labels": analysis.labels.tolist(),
           "walls": analysis.walls, "amorphous_mask": None, **analysis.scalars,
           "params": analysis.params, "rewards": analysis.rewards, "pareto": analysis.pareto,
           "n_evaluations": analysis.n_evaluations, "elapsed_s": round(elapsed, 3),
           "optimizer_s": round(analysis.optimizer_s, 3), "hypervolume": analysis.hypervolume}
    for key, arr in analysis.arrays.items():  # each published array as NAME.npy
        fname = f"{prefix}{key}.npy"
        if key == "polarization" and "cells" in analysis.arrays:  # the map: x, y, dx, dy
            arr, fname = (polarization_table(analysis.arrays["cells"], arr),
                          prefix + POLARIZATION_FILE)
        np.save(out / fname, arr)
        doc[key] = fname
    tmp = out / f".{name}.partial"
    tmp.write_text(json.dumps(doc, indent=1, default=_json_default))
    os.replace(tmp, out / name)
    return doc


def _engine_image(image: np.ndarray, analysis) -> np.ndarray:
    """The frame as the engine saw it: normalised to [0, 1], inverted for dark contrast."""
    from rewardscope.science import atomfind

    img = atomfind.normalize_frame(image)
    if (analysis.scalars.get("contrast") or {}).get("polarity") == "dark":
        img = np.float32(1.0) - img
    return img


def _finite(doc: dict) -> dict:
    """A candidate's plain data with non-finite rewards as null (strict JSON)."""
    rw = {k: (v if np.isfinite(v) else None) for k, v in doc.get("rewards", {}).items()}
    return {**doc, "rewards": rw}


def select_latent(image: np.ndarray, lattice_px: float | None, analysis, *, candidates: int,
                  epochs: int, round_s: float, seed: int = 0, progress: bool = False):
    """Train and select a latent model on one image, inline; the chosen one goes in use.

    The key points are those the latent workflow used in ``analysis`` (its ``keypoints``:
    the atoms, else a grid); the search is :func:`rewardscope.live.trainer.select_model`
    (the slow loop's, run here with a progress bar over candidates). The chosen model is
    swapped into the default model slot, where the latent workflow reads it.

    Parameters
    ----------
    image : (H, W) ndarray
        The frame as loaded.
    lattice_px : float or None
        The lattice hint (used as the key-point scale when no lattice was found).
    analysis : rewardscope.engine.Analysis
        A first analysis with the latent workflow in the chain.
    candidates, epochs : int
        Candidate models, training epochs per candidate.
    round_s : float
        Time budget of the search, s.
    seed : int, optional
        Seed of sampling and training.
    progress : bool, optional
        Show a progress bar on stderr.

    Returns
    -------
    best : rewardscope.live.trainer.Candidate or None
        The chosen candidate (None: all rejected).
    candidates : list of Candidate
        Every candidate, the chosen one marked.
    meta : dict
        Plain data about the search (objectives, settings, key points, spacing).
    """
    from dataclasses import asdict

    from tqdm import tqdm

    from rewardscope.engine.session import FALLBACK_SPACING_PX
    from rewardscope.live import trainer
    from rewardscope.science import descriptors
    from rewardscope.science.vae import FrameSample, model_info, model_slot

    img = _engine_image(image, analysis)
    kp = np.asarray(analysis.arrays["keypoints"], np.float64).reshape(-1, 2)
    lat = analysis.scalars.get("lattice") or {}
    if lat.get("a_px") and lat.get("b_px"):
        spacing = float(min(lat["a_px"], lat["b_px"]))
    else:
        spacing = float(lattice_px or FALLBACK_SPACING_PX)
    atoms = np.asarray(analysis.atoms, np.float64).reshape(-1, 2)
    if len(atoms) == len(kp) and len(kp) and np.allclose(atoms, kp, atol=1e-3):
        sites = descriptors.sublattices(img, kp)
    else:
        sites = np.full(len(kp), -1, np.int8)
        if len(kp) >= 2:  # a grid: the window's unit is its step, as in the live service
            from scipy.spatial import cKDTree  # noqa: PLC0415 - grid frames only

            d, _ = cKDTree(kp).query(kp, k=2)
            spacing = float(np.median(d[:, 1]))
    settings = trainer.TrainSettings(round_s=float(round_s), candidates=int(candidates),
                                     epochs=int(epochs), seed=int(seed), min_patches=16)
    bar = tqdm(total=settings.candidates, desc="latent models", unit="model",
               disable=not progress, file=sys.stderr)
    best, cands = trainer.select_model(
        [FrameSample(img, kp, np.asarray(sites, np.int8), spacing)], settings,
        on_candidate=lambda c: bar.set_postfix_str(c.status) or bar.update(1))
    bar.close()
    slot = model_slot()
    slot.clear()
    if best is not None and best.model is not None:
        slot.swap(best.model, model_info(best.model, best.rewards,
                                         sublattice=settings.sublattice, params=best.params,
                                         spacing_px=spacing))
    meta = {"objectives": list(trainer.OBJECTIVES), "settings": asdict(settings),
            "n_keypoints": int(len(kp)), "spacing_px": spacing}
    return best, cands, meta


POLARIZATION_FILE = "polarization_map.npy"


def polarization_table(cells: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """The polarization map as one (M, 4) float32 table: cell x, y and displacement dx, dy, px.

    Parameters
    ----------
    cells : (M, 2) array_like of float
        Cell centres x, y in px.
    vectors : (M, 2) array_like of float
        B-column displacements dx, dy in px, row-aligned with ``cells``.

    Returns
    -------
    (M, 4) ndarray of float32
        Columns x, y, dx, dy.

    Raises
    ------
    ValueError
        If ``cells`` and ``vectors`` are not both (M, 2) with the same M.
    """
    c = np.asarray(cells, dtype=np.float32).reshape(-1, 2)
    v = np.asarray(vectors, dtype=np.float32).reshape(-1, 2)
    if c.shape != v.shape:
        raise ValueError(f"cells {c.shape} and vectors {v.shape} must both be (M, 2)")
    return np.concatenate([c, v], axis=1)


def _json_default(v):
    out = plain(v)
    if out is v:
        raise TypeError(type(v).__name__)
    return out
