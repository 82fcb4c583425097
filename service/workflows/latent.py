"""Latent workflow: the fast loop of the latent analysis (encode with the model in use, label).

Per frame, the model in use (:func:`rewardscope.science.vae.model_slot`, swapped in by the
background trainer :mod:`rewardscope.live.trainer`, or by an offline caller) encodes the
patches around the frame's key points in one batched forward (CUDA when torch sees a GPU);
the optimizer then searches a Gaussian mixture on the latent means (number of components
1..5, full covariances) against the latent BIC and ICL. Nothing is trained here: without a model in
use every latent row is NaN / -1 and the header's ``model`` says ``{"id": null}``.

Key points: the atoms of the chain (``ctx.atoms``; those of the model's sublattice when it was
trained on one), else, on a frame without atoms (e.g. piezoresponse force microscopy), a
regular grid with step ``ctx.lattice_px / 2`` (published as ``keypoints``, N x 2; every latent
row aligns with them and, when there are atoms, with ``atoms``). The key points' spacing (the
unit of the trainer's ``window``) is the lattice spacing for atoms and the grid step for a
grid, so a window of 4/8 tiles a grid with patches that do not overlap.

While a trainer collects material (``slot.collect``), each frame's image and key points are
offered to the slot's bounded buffer (a reference, no copy of the image is made here).

Latent classes and walls (paper 000 section III): a KDE of one latent dimension, its peaks,
each key point assigned to the nearest peak (published as ``latent_classes``). The paper takes
z2; here the dimension is the one whose 1-D Gaussian mixtures gain most ICL over a single
component (:func:`rewardscope.science.latentstats.kde_classes`), and the number of classes is
the number of KDE peaks (one: "nothing here", no walls). Then the domain route's wall
extraction (wall points between neighbouring key points of different
class, chains, Hough segments) and significance (each segment's two sides compared by
:func:`rewardscope.science.domaintests.wall_tests` on the latent means, kept at FDR 1e-3).
Computed once per frame, on the chosen candidate (``finalize``).

Outputs: ``labels`` (published as ``latent_labels``; also the result's ``labels`` when no
earlier workflow labels), ``latent_classes`` (N, the KDE-peak classes, -1 = not encoded),
``latent`` (N x d means), ``latent_scale`` (N x d posterior standard
deviations), ``latent_angle`` (N, rotation latent, NaN without rotation invariance),
``keypoints`` (N x 2), ``latent_walls`` (S x 4) with ``latent_wall_significance`` (S,
-log10 p), and the scalar ``model`` (the model in use: id, architecture, rewards, training
time, patches).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from rewardscope.science import descriptors, domaintests, kernels, latentstats, mixtures
from rewardscope.science.dimensions import Integer
from rewardscope.science.rewards import latent_bic, latent_icl
from rewardscope.science.vae import FrameSample, ModelInUse, model_slot, one_hot
from rewardscope.workflows.base import (
    ATOMS,
    LABELS,
    PER_ATOM,
    PER_WALL,
    SCALAR,
    Evaluation,
    FrameContext,
    Output,
    Workflow,
    single_thread,
)

__all__ = ["GRID_FRACTION", "MIN_SITES", "LatentWorkflow", "grid_keypoints", "half_window",
           "keypoints_of", "latent_walls", "patches_at"]

SUBLATTICES = {"A": 0, "B": 1}
WINDOW_UNIT = 8  # window = patch half-width in 1/WINDOW_UNIT lattice spacings
GMM_REG_COVAR = 1e-4  # latent variance floor for the mixture
GMM_SEED = 0
COVARIANCE = "full"  # the latent has 2-3 dimensions: full covariances cost little
MIN_SITES = 8
GRID_FRACTION = 0.5  # grid key points every GRID_FRACTION x ctx.lattice_px on atom-less frames
NO_MODEL = {"id": None}


def half_window(window: int, spacing_px: float) -> int:
    """Patch half-width in px of a ``window`` parameter (eighths of the key-point spacing).

    Parameters
    ----------
    window : int
        Patch half-width in 1/WINDOW_UNIT spacings.
    spacing_px : float
        Lattice spacing (or grid scale), px.

    Returns
    -------
    int
        Half-width in px, rounded half up, at least 2.
    """
    return max(2, int(math.floor(int(window) * float(spacing_px) / WINDOW_UNIT + 0.5)))


def grid_keypoints(shape: tuple[int, int], step_px: float) -> np.ndarray:
    """(N, 2) x, y of a regular grid with ``step_px`` spacing, centred in the frame.

    Parameters
    ----------
    shape : (int, int)
        Frame (H, W), px.
    step_px : float
        Grid step, px (>= 1).

    Returns
    -------
    (N, 2) ndarray of float64

    Raises
    ------
    ValueError
        If ``step_px`` < 1.
    """
    step = float(step_px)
    if not step >= 1.0:
        raise ValueError(f"step_px must be >= 1, got {step_px!r}")
    h, w = int(shape[0]), int(shape[1])
    xs = np.arange((w - 1) % step / 2.0, w, step)
    ys = np.arange((h - 1) % step / 2.0, h, step)
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def keypoints_of(ctx: FrameContext) -> tuple[np.ndarray, np.ndarray, float]:
    """The frame's key points: its atoms (with sublattice), else a regular grid.

    Parameters
    ----------
    ctx : FrameContext
        The frame (``ctx.atoms`` from upstream).

    Returns
    -------
    keypoints : (N, 2) ndarray of float64
        x, y px.
    sites : (N,) ndarray of int8
        0 = A, 1 = B for atoms; -1 for grid points.
    spacing_px : float
        The key points' scale: ``ctx.lattice_px`` for atoms, the grid step for a grid.
    """
    key = ("latent", "keypoints")
    if key not in ctx.cache:
        atoms = None if ctx.atoms is None else np.asarray(ctx.atoms, np.float64).reshape(-1, 2)
        if atoms is not None and len(atoms) >= MIN_SITES:
            site = np.asarray(descriptors.sublattices(ctx.image, atoms, ctx.sites), np.int8)
            ctx.sites = site
            ctx.cache[key] = (atoms, site, float(ctx.lattice_px))
        else:
            step = max(1.0, GRID_FRACTION * float(ctx.lattice_px))
            kp = grid_keypoints(ctx.shape, step)
            ctx.cache[key] = (kp, np.full(len(kp), -1, np.int8), step)
    return ctx.cache[key]


def patches_at(image: np.ndarray, keypoints: np.ndarray, half: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Square patches (2 half + 1 px) around key points, and which lie wholly in the frame.

    Parameters
    ----------
    image : (H, W) array_like of float
        Frame, ~[0, 1].
    keypoints : (N, 2) array_like of float
        x, y px.
    half : int
        Patch half-width, px.

    Returns
    -------
    patches : (N, 2 half + 1, 2 half + 1) ndarray of float32
    inside : (N,) ndarray of bool
    """
    kp = np.asarray(keypoints, np.float64).reshape(-1, 2)
    return (kernels.extract_patches(image, kp, half, half),
            kernels.patches_valid(kp, np.shape(image), half, half))


def used_rows(sites: np.ndarray, sublattice: str) -> np.ndarray:
    """Indices of the key points a model for ``sublattice`` ("A", "B", "all") encodes.

    Parameters
    ----------
    sites : (N,) array_like of int
        0 = A, 1 = B, -1 = no sublattice (grid points: always used).
    sublattice : {"A", "B", "all"}

    Returns
    -------
    (n,) ndarray of int
    """
    s = np.asarray(sites)
    if sublattice in SUBLATTICES and np.any(s >= 0):
        return np.flatnonzero(s == SUBLATTICES[sublattice])
    return np.arange(len(s))


def latent_walls(xy: np.ndarray, z: np.ndarray, lattice_px: float, shape: tuple[int, int]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Walls between the KDE-peak classes of the key points, with their significance.

    The classes are :func:`rewardscope.science.latentstats.kde_classes` of ``z`` (KDE peaks
    of the latent dimension the 1-D ICL finds most multimodal).

    Parameters
    ----------
    xy : (n, 2) array_like of float
        Key points x, y px (finite latent rows only).
    z : (n, d) array_like of float
        Their latent means.
    lattice_px : float
        Lattice spacing (or key-point scale), px.
    shape : (int, int)
        Frame (H, W), px.

    Returns
    -------
    classes : (n,) ndarray of int16
        Nearest KDE peak of each key point (all 0 when no dimension shows classes).
    segments : (S, 4) ndarray of float64
        Significant wall segments [x0, y0, x1, y1], px.
    neg_log10_p : (S,) ndarray of float64
        -log10 p of each segment (its two sides' latent means differ).
    """
    from rewardscope.workflows.domains import (  # noqa: PLC0415 - the domain route's walls
        hough_segments,
        merge_collinear,
        rasterise_tree,
        wall_chains,
    )

    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    z = np.asarray(z, np.float64).reshape(len(xy), -1)
    empty = (np.zeros(len(xy), np.int16), np.zeros((0, 4)), np.zeros(0))
    if len(xy) < 2 * MIN_SITES or z.shape[1] == 0:
        return empty
    classes, peaks, _ = latentstats.kde_classes(z)
    if len(peaks) < 2:
        return classes, empty[1], empty[2]
    tree = cKDTree(xy)
    d, _ = tree.query(xy, k=2)
    spacing = float(np.median(d[:, 1]))
    pairs = np.array(sorted(tree.query_pairs(1.5 * spacing)), dtype=np.int64).reshape(-1, 2)
    diff = pairs[classes[pairs[:, 0]] != classes[pairs[:, 1]]] if len(pairs) else pairs
    if len(diff) < 2:
        return classes, empty[1], empty[2]
    points = 0.5 * (xy[diff[:, 0]] + xy[diff[:, 1]])
    _, forest = wall_chains(points, 1.5 * spacing)
    raster = rasterise_tree(points, forest, shape)
    segments = merge_collinear(hough_segments(raster, lattice_px), lattice_px)
    segments = np.asarray(segments, np.float64).reshape(-1, 4)
    if len(segments) == 0:
        return classes, empty[1], empty[2]
    zz = z[:, :2] if z.shape[1] >= 2 else np.concatenate([z, np.zeros_like(z)], axis=1)
    try:
        noise = domaintests.offset_noise(xy, zz, lattice_px, shape)
        logp = domaintests.wall_tests(segments, xy, noise)
    except ValueError:
        return classes, empty[1], empty[2]
    keep = domaintests.discoveries(logp)
    return classes, segments[keep], logp[keep]


@dataclass
class _Encoded:
    """The model in use's view of one frame (cached in ctx.cache)."""

    entry: ModelInUse | None
    keypoints: np.ndarray  # (N, 2) every key point of the frame
    index: np.ndarray  # rows encoded (the model's sublattice)
    loc: np.ndarray  # (n, d) content latent means of the encoded rows
    scale: np.ndarray  # (n, d) their posterior standard deviations
    angle: np.ndarray | None  # (n,) rotation latent, or None
    valid: np.ndarray  # (n,) patch wholly inside the frame (the mixture's fitted rows)
    seconds: float


class LatentWorkflow(Workflow):
    """Encode with the model in use, label by a GMM on the latent; see the module docstring.

    Parameters
    ----------
    slot : str, optional
        Name of the model slot (:func:`rewardscope.science.vae.model_slot`) read for the
        model in use and offered the frame's material (default ``"default"``).
    """

    name = "latent"
    space = (Integer(1, 5, name="n_components"),)
    rewards = ("latent_bic", "latent_icl")
    needs = (ATOMS,)
    produces = (
        Output("labels", LABELS, name="latent_labels"),
        Output("classes", PER_ATOM, name="latent_classes"),
        Output("latent", PER_ATOM),
        Output("latent_scale", PER_ATOM),
        Output("latent_angle", PER_ATOM),
        Output("keypoints", PER_ATOM),
        Output("latent_walls", PER_WALL),
        Output("latent_wall_significance", PER_WALL),
        Output("model", SCALAR),
    )
    stage = "vae"
    thread_safe = True

    def __init__(self, slot: str = "default") -> None:
        self.slot = str(slot)

    def default_params(self, lattice_px: float) -> dict[str, Any]:
        """Two components (two polarization variants, a/c domains)."""
        return {"n_components": 2}

    # ---------------------------------------------------------------- per-frame work
    def prepare(self, ctx: FrameContext) -> None:
        """Key points, patches and one batched encode per frame; offer the frame's material."""
        self._encoded(ctx)

    def _encoded(self, ctx: FrameContext) -> _Encoded:
        key = ("latent", "encoded", self.slot)
        if key in ctx.cache:
            return ctx.cache[key]
        t0 = time.perf_counter()
        slot = model_slot(self.slot)
        kp, sites, spacing = keypoints_of(ctx)
        if slot.collect:
            slot.offer(FrameSample(ctx.image, kp, sites, spacing))
        entry = slot.current()
        if entry is None:
            enc = _Encoded(None, kp, np.zeros(0, np.int64), np.zeros((0, 0), np.float32),
                           np.zeros((0, 0), np.float32), None, np.zeros(0, bool), 0.0)
        else:
            model = entry.model
            index = used_rows(sites, str(entry.info.get("sublattice", "all")))
            half = (model.patch_px - 1) // 2
            patches, inside = patches_at(ctx.image, kp[index], half)
            c = one_hot(sites[index], model.c_dim) if model.conditional else None
            loc, scale = model.posterior(patches, c)
            ns = model.n_special
            angle = loc[:, 0].copy() if "r" in model.invariances else None
            enc = _Encoded(entry, kp, index, np.ascontiguousarray(loc[:, ns:]),
                           np.ascontiguousarray(scale[:, ns:]), angle,
                           mixtures.trusted_rows(inside, MIN_SITES),
                           time.perf_counter() - t0)
        ctx.cache[key] = enc
        return enc

    # ---------------------------------------------------------------- one candidate
    def evaluate(self, ctx: FrameContext, params: dict[str, Any]) -> Evaluation:
        """A GMM with ``n_components`` on the frame's latent means; its BIC and ICL."""
        enc = self._encoded(ctx)
        k = int(params["n_components"])
        if enc.entry is None or len(enc.index) < max(MIN_SITES, 2 * k):
            return self._empty(enc)
        try:
            with single_thread():
                fit = mixtures.mixture_labels(
                    enc.loc.astype(np.float64), k, COVARIANCE,
                    fit_rows=enc.valid, seed=GMM_SEED, n_init=1, max_iter=200, tol=1e-4,
                    reg_covar=GMM_REG_COVAR, max_fit_rows=2000)
                bic = fit.bic_per_row
                tau = fit.model.predict_proba(fit.fit)
                ent = float(-np.sum(tau * np.log(np.clip(tau, 1e-300, None)))) / len(fit.fit)
        except (ValueError, np.linalg.LinAlgError):  # degenerate latent: worst case
            return self._empty(enc)
        rw = {"latent_bic": latent_bic(bic), "latent_icl": latent_icl(bic + 2.0 * ent)}
        out = self._output(enc, fit.labels)
        return Evaluation(rewards=rw, output=out, timings={"vae": enc.seconds})

    def finalize(self, ctx: FrameContext, chosen: Evaluation) -> dict[str, Any]:
        """The latent classes and walls (KDE peaks, once per frame on the chosen candidate)."""
        enc = self._encoded(ctx)
        if enc.entry is None or len(enc.index) == 0:
            return {}
        ok = np.all(np.isfinite(enc.loc), axis=1)
        with single_thread():
            cls, seg, logp = latent_walls(enc.keypoints[enc.index][ok], enc.loc[ok],
                                          float(ctx.lattice_px), ctx.shape)
        classes = np.full(len(enc.keypoints), -1, np.int16)
        classes[enc.index[ok]] = cls
        return {"classes": classes, "latent_walls": seg.astype(np.float32),
                "latent_wall_significance": logp.astype(np.float32)}

    # ---------------------------------------------------------------- outputs
    @staticmethod
    def _output(enc: _Encoded, sub: np.ndarray | None) -> dict[str, Any]:
        n = len(enc.keypoints)
        d = enc.loc.shape[1] if enc.entry is not None else 0
        labels = np.full(n, -1, np.int16)
        latent = np.full((n, d), np.nan, np.float32)
        scale = np.full((n, d), np.nan, np.float32)
        angle = np.full(n, np.nan, np.float32)
        if enc.entry is not None and len(enc.index):
            latent[enc.index] = enc.loc
            scale[enc.index] = enc.scale
            if enc.angle is not None:
                angle[enc.index] = enc.angle
            if sub is not None:
                labels[enc.index] = sub
        model = dict(enc.entry.info) if enc.entry is not None else dict(NO_MODEL)
        return {"labels": labels, "classes": np.full(n, -1, np.int16), "latent": latent,
                "latent_scale": scale, "latent_angle": angle,
                "keypoints": enc.keypoints.astype(np.float32),
                "latent_walls": np.zeros((0, 4), np.float32),
                "latent_wall_significance": np.zeros(0, np.float32), "model": model}

    def _empty(self, enc: _Encoded) -> Evaluation:
        """No model in use, too few key points or a degenerate latent: nothing labelled,
        the rewards NaN (a failed candidate)."""
        return Evaluation(rewards={"latent_bic": math.nan, "latent_icl": math.nan},
                          output=self._output(enc, None))
