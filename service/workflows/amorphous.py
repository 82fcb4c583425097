"""Amorphous regions: significance-gated GMM on per-atom descriptors, mask, regions, rewards.

After Barakati et al. (Digital Discovery 2024): atoms are described by image patches, a
Gaussian mixture model (GMM) is fitted to the descriptors, and atoms whose posterior for the
"disordered" component exceeds a threshold are amorphous; threshold and covariance type (and
here the window and the number of components) are tuned against the compactness and the
perimeter of the resulting regions.

One evaluation (everything before the GMM fit is cached per frame, or per frame and window):

1. **Atoms used**: ``ctx.atoms`` at least ``EDGE_MARGIN`` lattice spacings inside the frame
   (see :class:`FrameState` for why); the others get a label from the final mask.
2. **Descriptors**, all columns standardised:

   * *patch profile* (per window ``w``): the azimuthal mean of the (2w+1)^2 patch ring by ring
     (pixels inside the frame only), minus the median profile of the atom's sublattice and
     divided by its MAD (A bright / B dim, from ``ctx.sites`` or
     :func:`rewardscope.science.descriptors.classify_sublattices`), PCA to ``PCA_DIMS`` scores.
     Measured: raw patches let a 2-3 component GMM split A from B, and full 2-D patches let
     it split polarization domains (direction of the B displacement); azimuthal averaging and
     the per-sublattice template leave mostly what amorphisation changes (dimmer, broader
     columns, smeared or missing neighbour shells).
   * *local order* (window-independent): :func:`local_disorder`, the neighbourhood median of
     1 - |psi4| (4-fold bond-orientational order). Bond-length deviations were tried and
     dropped: the B displacement makes crystalline bond lengths bimodal, which the GMM split.

3. **Significance** (per frame, parameter-free): each site's local disorder gets a p-value
   against the frame's own crystalline majority (a robust Gaussian null of the log score,
   :func:`site_significance`), or against the sites the lattice indexes when most sites are
   unlike those (a view mostly amorphous), Benjamini-Hochberg at ``FDR_Q`` = 0.01 keeps the
   significant sites, and :func:`candidate_sites` keeps those that are also closer to
   random bond angles than to the crystal and above the frame's own two-class split. Only
   these can be flagged. If none of them can form a region (``FrameState.n_significant`` =
   0), the frame has no disordered region: every candidate returns the empty mask, without
   a GMM fit, and the rewards score that answer as right (docs/REWARDS.md, regions).
4. **GMM** (sklearn, ``random_state=SEED``) with ``n_components`` and ``covariance_type``.
   Components mostly (posterior-weighted) made of candidate sites are "disordered" (if none
   is, the most); an atom's disordered posterior is the sum over them. A site is flagged
   when that posterior > ``threshold`` *and* it is a candidate site (:func:`flag_sites` says
   why both).
5. **Mask**: flagged sites paint their Voronoi cell within ``DISK_FRAC`` lattice spacings
   (a union of disks clipped to Voronoi cells, so the outline lies midway between flagged and
   unflagged sites instead of a radius outside the last flagged one); clusters of fewer than
   ``MIN_SITES`` flagged sites dropped, closed by a disk of a/2, holes filled, small clusters
   dropped again. ``labels`` (int16 per atom of ``ctx.atoms``) = the mask at the atom.
6. **Regions**: ``region_labels`` ((H, W) int16, 0 = none, i = region i) are the mask's
   8-connected components; ``region_significance`` ((R,) float) is -log10 of each region's
   q-value, the smallest BH-adjusted p-value of the significant sites in it
   (:func:`label_regions`): >= 2 for every region reported.

Rewards: the paper's ``region_compactness`` (max) and ``normalised_perimeter`` (min) from
:mod:`rewardscope.science.rewards`, plus ``order_contrast`` (max): the share of the
variance of the site disorder score explained by the mask (Otsu's between-class criterion).
Why a third: the two shape rewards are blind to *what* the mask covers. A whole-frame mask
(compactness ~0.8-0.9, perimeter ratio ~1.1) and a compact half of one region both beat a
correct mask on both shape rewards, and such candidates reached the Pareto knee on simulated
frames; ``order_contrast`` is 0 for an empty or full mask and for a mask that misses the
disordered sites, and near 1 for a correct one. All three receive ``n_significant``: with
nothing significant the empty mask is the best answer (1.0 / 1.0 / 1.0) and any region the
worst, so "no disordered region" is an answer the knee can give.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numba import njit
from scipy import ndimage, special
from scipy.spatial import cKDTree

from rewardscope.science import kernels, mixtures
from rewardscope.science.descriptors import standardise_columns, standardised_pca, sublattices
from rewardscope.science.dimensions import Categorical, Integer, Real
from rewardscope.science.lattice import indexed_sites
from rewardscope.science.once import once
from rewardscope.science.rewards import normalised_perimeter, order_contrast, region_compactness
from rewardscope.workflows.base import (
    ATOMS,
    LABELS,
    MASK,
    PER_REGION,
    Evaluation,
    FrameContext,
    Output,
    Workflow,
    single_thread,
)

__all__ = [
    "AmorphousWorkflow",
    "COVARIANCE_TYPES",
    "RingTable",
    "SiteSignificance",
    "bh_log_q",
    "candidate_sites",
    "disorder_split",
    "label_regions",
    "local_disorder",
    "mask_from_sites",
    "order_contrast",
    "site_significance",
]

COVARIANCE_TYPES = mixtures.COVARIANCE_TYPES
CACHE_KEY = "amorphous/frame"
SEED = 0
PCA_DIMS = 2
"""Profile PCA scores kept (measured: 1-2 beat 4, whose minor axes carry noise the GMM fits)."""
FDR_Q = 0.01
"""False-discovery rate of the disordered sites (Benjamini-Hochberg): of the sites reported
disordered, at most this share are expected to be crystalline sites flagged by chance."""
NULL_FLOOR = 0.2
"""Least spread of the crystal's null (natural-log units of the disorder score + its pixel
floor, see :func:`site_significance`): what a +-0.5 px position uncertainty alone gives a
perfect lattice (computed for a = 6-20 px: 0.16-0.21). Keeps a clean frame, whose sites all
score nearly alike, from calling a hair's difference significant."""
RANDOM_DISORDER = 0.55
"""Mean 1 - |psi4| of a site whose 4 bonds point in independent uniformly random directions
(Monte Carlo, 4e6 draws: 0.550; median 0.561): the score of complete bond-angle disorder,
whatever the material or microscope."""
NULL_ITERATIONS = 3
"""Refits of the null on the sites not (yet) significant: the crystalline majority."""
DISK_FRAC = 0.75
"""Reach of a flagged site's disk, in lattice spacings (covers gaps of missed columns)."""
SMOOTH_K = 9
"""Atoms in the disorder median (self + 4 bonds + 4 second neighbours of the A+B lattice)."""
MIN_SITES = SMOOTH_K
"""Mask components holding fewer flagged sites are noise, not regions: the disorder score is
a median over SMOOTH_K sites, so a smaller patch is below its resolution (measured: crystal
frames at low dose or noise 0.35 gave clusters of 3-7 significant sites, significance 2-6;
simulated regions, even cut by the frame border, 15 or more)."""
BOND_CUTOFF = 1.2
"""Neighbours within this many ideal bond lengths count as bonds (2nd shell is at sqrt(2))."""
MIN_ATOMS = 10
"""Fewer atoms than this: nothing to cluster, empty mask."""
CLOSE_BY_DISKS = True
"""The mask closing's dilations stamp disks on boundary pixels (:func:`_dilate_by_disks`);
False: two Euclidean distance transforms of the box (the same result, slower)."""
EDGE_MARGIN = 0.25
"""Atoms nearer the frame border than this (lattice spacings) are not analysed (see
:class:`FrameState`)."""


# --------------------------------------------------------------------------------------------
# local order
# --------------------------------------------------------------------------------------------


def _near_edge(xy: np.ndarray, shape: tuple[int, int], reach: float) -> np.ndarray:
    h, w = shape
    x, y = xy[:, 0], xy[:, 1]
    return (x < reach) | (y < reach) | (x > w - 1 - reach) | (y > h - 1 - reach)


def _expected_bonds(xy: np.ndarray, shape: tuple[int, int], margin: float, reach: float
                    ) -> np.ndarray:
    """Bonds an atom of a perfect lattice surely has inside the analysed area.

    4 times the share of the circle of radius ``reach`` around the atom that lies inside
    [margin, W-1-margin] x [margin, H-1-margin], rounded down: whatever the lattice
    orientation, fewer bonds than that cannot be blamed on the field of view. (The arcs
    outside two borders are both subtracted near a corner: fewer expected, never more.)
    """
    h, w = shape
    gap = np.stack([xy[:, 0] - margin, w - 1 - margin - xy[:, 0],
                    xy[:, 1] - margin, h - 1 - margin - xy[:, 1]], axis=1)
    outside = 2.0 * np.arccos(np.clip(gap / reach, -1.0, 1.0)).sum(axis=1)
    return np.floor(4.0 * np.clip(1.0 - outside / (2.0 * np.pi), 0.0, 1.0) + 1e-9)


def _site_disorder(
    xy: np.ndarray, tree: cKDTree, shape: tuple[int, int], bond: float, margin: float
) -> np.ndarray:
    """1 - |psi4| of each atom over its <= 4 bonds; a missing bond counts as a random one.

    A bond is missing when the atom has fewer than :func:`_expected_bonds`: near the border
    only the bonds that must lie inside the view count (with none counted there, an
    amorphous site at the border with one surviving bond scored as perfectly ordered:
    measured, regions touching the border lost their outer lattice spacing, IoU 0.71 vs
    0.89 with this count).
    """
    dist, idx = tree.query(xy, k=5)
    dist, idx = dist[:, 1:], idx[:, 1:]
    near = dist < BOND_CUTOFF * bond
    n_near = near.sum(axis=1)
    missing = np.maximum(_expected_bonds(xy, shape, margin, BOND_CUTOFF * bond) - n_near, 0)
    vec = xy[np.minimum(idx, len(xy) - 1)] - xy[:, None, :]
    phase = np.where(near, np.exp(4j * np.arctan2(vec[..., 1], vec[..., 0])), 0.0)
    return 1.0 - np.abs(phase.sum(axis=1)) / np.maximum(n_near + missing, 1)


def _neighbourhood_median(
    tree: cKDTree, xy: np.ndarray, radius: float, values: np.ndarray
) -> np.ndarray:
    """Median of ``values`` over the atoms within ``radius`` (self included).

    A median, not a mean: it removes single-site noise like a mean does, but does not smear
    a region's disorder onto the crystalline atoms along its boundary (edge-preserving).
    """
    dist, idx = tree.query(xy, k=SMOOTH_K, distance_upper_bound=radius)
    ok = np.isfinite(dist)
    return kernels.row_median(values[np.where(ok, idx, 0)], ok)


def local_disorder(
    xy: np.ndarray, shape: tuple[int, int], lattice_px: float, edge_margin: float = 0.0
) -> np.ndarray:
    """Crystalline-disorder score of each atom: neighbourhood median of 1 - |psi4|.

    psi4 = mean over an atom's bonds of exp(4i*theta) is the 4-fold bond-orientational order
    parameter: |psi4| = 1 on the projected square A+B lattice of ABO3 [001] (bond a/sqrt(2),
    whatever the lattice rotation), ~0 for random bond angles. It is used rather than bond
    lengths because the ferroelectric B displacement makes crystalline bond lengths bimodal
    (by sublattice and domain), which a GMM then splits instead of order from disorder; bond
    angles change far less. The median over the ~9 atoms within one lattice spacing turns
    per-site values that overlap between crystal and a jittered region into separated ones.
    Atoms within a bond (+ ``edge_margin``, where atoms were dropped) of the border may lack
    bonds for want of field of view, not order: only the bonds that must lie inside the view
    count as missing (:func:`_expected_bonds`).

    Parameters
    ----------
    xy : (N, 2) array_like of float
        Atom positions x, y in px.
    shape : (int, int)
        Frame (H, W) in px.
    lattice_px : float
        Lattice spacing a in px.
    edge_margin : float, optional
        Extra border width in px where atoms were dropped upstream (default 0).

    Returns
    -------
    (N,) ndarray of float64
        Score in [0, 1] (0 = perfect square lattice); zeros for fewer than 5 atoms.
    """
    pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if pts.shape[0] < 5:
        return np.zeros(pts.shape[0])
    tree = cKDTree(pts)
    bond = lattice_px / math.sqrt(2.0)
    site = _site_disorder(pts, tree, shape, bond, float(edge_margin))
    return _neighbourhood_median(tree, pts, 1.05 * lattice_px, site)


# --------------------------------------------------------------------------------------------
# patch descriptors
# --------------------------------------------------------------------------------------------


def _ring_index(half: int) -> tuple[np.ndarray, int]:
    """Integer radius of every pixel of a (2*half+1)^2 patch, and the number of rings."""
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    ring = np.floor(np.hypot(xx, yy) + 0.5).astype(np.int64).ravel()
    ring = np.minimum(ring, half)  # corners join the outermost ring
    return ring, half + 1


def radial_profiles(image: np.ndarray, xy: np.ndarray, half: int) -> np.ndarray:
    """Azimuthal mean of the patch around each atom, ring by ring.

    Rotation-averaged patches keep what changes in amorphous regions (dimmer, broader column,
    neighbour shells smeared or missing) and drop the direction of the B displacement, which
    differs between polarization domains and would otherwise be what the GMM splits. Only
    pixels inside the frame are averaged: mirror-padded content near the edge is not the
    sample, and made edge atoms a GMM cluster of their own. Computed by :class:`RingTable`
    (one pass over the pixels, any window up to its reach).

    Parameters
    ----------
    image : (H, W) ndarray
        The frame.
    xy : (N, 2) ndarray of float
        Atom positions x, y in px (patches centred on the rounded positions, clipped into
        the frame).
    half : int
        Patch half size in px; ring r holds the pixels at radius r +- 0.5 px (corners join
        the outermost ring).

    Returns
    -------
    (N, half + 1) ndarray of float64
        Mean intensity per ring, image units.
    """
    return RingTable.build(image, xy, half).profiles(half)


def _radial_profiles_reference(image: np.ndarray, xy: np.ndarray, half: int) -> np.ndarray:
    """:func:`radial_profiles` in plain numpy (patches times a ring one-hot matrix): the
    readable specification the kernel is tested against."""
    n = len(xy)
    patches = kernels.extract_patches(image, xy, half, half).reshape(n, -1).astype(np.float64)
    ring, n_rings = _ring_index(half)
    onehot = np.zeros((ring.size, n_rings))
    onehot[np.arange(ring.size), ring] = 1.0
    inside = _inside_patch(xy, image.shape, half).reshape(n, -1)
    sums = (patches * inside) @ onehot
    counts = inside @ onehot
    return sums / np.maximum(counts, 1.0)


@dataclass(frozen=True)
class RingTable:
    """Per atom, the frame's pixel sums and counts by ring and by square, up to ``reach`` px.

    Any window ``half`` <= ``reach`` follows without touching the pixels again: ring r < half
    holds the same pixels in every window (a pixel at integer radius r lies within
    Chebyshev distance r), and the outermost ring ``half`` (corners included) is the square
    of half size ``half`` minus the inner rings. So a frame pays a pass over
    (2 reach + 1)^2 pixels per atom (a numba ``nogil`` loop; the workflow builds one for the
    first window a frame tries and, once a wider one comes, one for the whole window range)
    instead of one patch extraction per window.

    Attributes
    ----------
    reach : int
        Largest window half size served, px.
    ring_sum, ring_count : (N, reach) ndarray of float64
        Sum and number of in-frame pixels at integer radius r (round half up), r < reach.
    square_sum, square_count : (N, reach + 1) ndarray of float64
        Sum and number of in-frame pixels within Chebyshev distance c of the centre.
    """

    reach: int
    ring_sum: np.ndarray
    ring_count: np.ndarray
    square_sum: np.ndarray
    square_count: np.ndarray

    @classmethod
    def build(cls, image: np.ndarray, xy: np.ndarray, reach: int) -> RingTable:
        """The table of ``image`` around ``xy`` up to ``reach`` px.

        Parameters
        ----------
        image : (H, W) array_like
            The frame (read as float32).
        xy : (N, 2) array_like of float
            Atom positions x, y in px (centres rounded half up, clipped into the frame).
        reach : int
            Largest window half size to serve, px (>= 0).

        Returns
        -------
        RingTable

        Raises
        ------
        ValueError
            If ``reach`` is not a non-negative integer.
        """
        if int(reach) != reach or reach < 0:
            raise ValueError(f"reach must be a non-negative integer, got {reach!r}")
        reach = int(reach)
        img = np.ascontiguousarray(image, dtype=np.float32)
        pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        iy, ix = _pixel_of(pts, img.shape)
        yy, xx = np.mgrid[-reach : reach + 1, -reach : reach + 1]
        ring = np.floor(np.hypot(xx, yy) + 0.5).astype(np.int64)
        rs, rc, ss, sc = kernels.row_chunks(  # atoms are independent: chunks on threads
            lambda sl: _ring_table_kernel(img, iy[sl], ix[sl], ring, reach), len(iy))
        return cls(reach, rs, rc, np.cumsum(ss, axis=1), np.cumsum(sc, axis=1))

    def profiles(self, half: int) -> np.ndarray:
        """Mean intensity per ring of the window ``half``, as :func:`radial_profiles`.

        Parameters
        ----------
        half : int
            Window half size in px, 0 <= half <= ``reach``.

        Returns
        -------
        (N, half + 1) ndarray of float64
            Mean intensity per ring (image units; 0 for a ring with no pixel in the frame).

        Raises
        ------
        ValueError
            If ``half`` is not an integer in [0, ``reach``].
        """
        if int(half) != half or not 0 <= half <= self.reach:
            raise ValueError(f"half must be an integer in [0, {self.reach}], got {half!r}")
        half = int(half)
        sums = np.empty((self.ring_sum.shape[0], half + 1))
        counts = np.empty_like(sums)
        sums[:, :half] = self.ring_sum[:, :half]
        counts[:, :half] = self.ring_count[:, :half]
        sums[:, half] = self.square_sum[:, half] - sums[:, :half].sum(axis=1)
        counts[:, half] = self.square_count[:, half] - counts[:, :half].sum(axis=1)
        return sums / np.maximum(counts, 1.0)


@njit(cache=True, nogil=True)
def _ring_table_kernel(image, rows, cols, ring, reach):
    n = rows.shape[0]
    height, width = image.shape
    side = 2 * reach + 1
    ring_sum = np.zeros((n, reach))
    ring_count = np.zeros((n, reach))
    square_sum = np.zeros((n, reach + 1))
    square_count = np.zeros((n, reach + 1))
    # a window inside the frame: counts fixed per bin, no bounds tests, sums in local bins
    # (pixels in the same raster order, so each bin's sum is the general loop's, bit for
    # bit; ~2x faster: the general loop's four read-modify-writes per pixel go to memory)
    cheb = np.empty((side, side), dtype=np.int64)
    bin_of = np.empty((side, side), dtype=np.int64)  # ring, or reach beyond the rings
    inside_rings = np.zeros(reach)
    inside_squares = np.zeros(reach + 1)
    for u in range(side):
        for v in range(side):
            c = max(abs(u - reach), abs(v - reach))
            cheb[u, v] = c
            inside_squares[c] += 1.0
            bin_of[u, v] = min(ring[u, v], reach)
            if ring[u, v] < reach:
                inside_rings[ring[u, v]] += 1.0
    rs = np.zeros(reach + 1)
    ss = np.zeros(reach + 1)
    for a in range(n):
        y0 = rows[a] - reach
        x0 = cols[a] - reach
        if y0 >= 0 and x0 >= 0 and y0 + side <= height and x0 + side <= width:
            rs[:] = 0.0
            ss[:] = 0.0
            for u in range(side):
                row = image[y0 + u]
                for v in range(side):
                    val = np.float64(row[x0 + v])
                    rs[bin_of[u, v]] += val
                    ss[cheb[u, v]] += val
            ring_sum[a] = rs[:reach]
            ring_count[a] = inside_rings
            square_sum[a] = ss
            square_count[a] = inside_squares
            continue
        for u in range(side):
            y = rows[a] + u - reach
            if y < 0 or y >= height:
                continue
            for v in range(side):
                x = cols[a] + v - reach
                if x < 0 or x >= width:
                    continue
                val = np.float64(image[y, x])
                r = ring[u, v]
                if r < reach:
                    ring_sum[a, r] += val
                    ring_count[a, r] += 1.0
                c = cheb[u, v]
                square_sum[a, c] += val
                square_count[a, c] += 1.0
    return ring_sum, ring_count, square_sum, square_count


def _inside_patch(xy: np.ndarray, shape: tuple[int, int], half: int) -> np.ndarray:
    """(N, P, P) float: 1 where the patch pixel lies inside the frame, else 0."""
    iy, ix = _pixel_of(xy, shape)
    off = np.arange(-half, half + 1)
    rows = (iy[:, None] + off >= 0) & (iy[:, None] + off < shape[0])
    cols = (ix[:, None] + off >= 0) & (ix[:, None] + off < shape[1])
    return (rows[:, :, None] & cols[:, None, :]).astype(np.float64)


def patch_residuals(
    image: np.ndarray, xy: np.ndarray, sub: np.ndarray, half: int, k: int = PCA_DIMS,
    rings: RingTable | None = None,
) -> np.ndarray:
    """How each atom's radial profile departs from its sublattice's crystalline motif, PCA-reduced.

    Each sublattice's profiles are centred on its median and scaled by its per-ring MAD, so
    the A/B contrast and the A/B noise levels both drop out; what is left is deviation from
    the crystalline motif of that sublattice. The median and MAD come from patches wholly
    inside the frame (when a sublattice has at least 3), the PCA from
    :func:`rewardscope.science.descriptors.standardised_pca`.

    Parameters
    ----------
    image : (H, W) ndarray
        The frame.
    xy : (N, 2) ndarray of float
        Atom positions x, y in px.
    sub : (N,) ndarray of int
        Sublattice of each atom (0 = A, 1 = B).
    half : int
        Patch half size in px.
    k : int, optional
        Scores kept (default PCA_DIMS; at most half + 1).
    rings : RingTable, optional
        The :class:`RingTable` of ``image`` around these ``xy`` with reach >= ``half``, when
        the caller keeps one (several windows of one frame); default: built here.

    Returns
    -------
    (N, k) ndarray of float64
        PCA scores of the robust z-scores (dimensionless).
    """
    if rings is None or rings.reach < half or rings.ring_sum.shape[0] != len(xy):
        rings = RingTable.build(image, xy, half)
    prof = rings.profiles(half)
    valid = kernels.patches_valid(xy, image.shape, half, half)
    resid = np.empty_like(prof)
    for s in np.unique(sub):
        rows = sub == s
        ref = prof[rows][mixtures.trusted_rows(valid[rows], 3)]
        med = np.median(ref, axis=0)
        mad = np.median(np.abs(ref - med), axis=0)
        resid[rows] = (prof[rows] - med) / np.where(mad > 1e-9, 1.4826 * mad, 1.0)
    return standardised_pca(resid, valid, min(k, prof.shape[1]))


# --------------------------------------------------------------------------------------------
# significance: per-site p-values against the crystal's own null, FDR control
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteSignificance:
    """How far each site's disorder stands above the frame's crystalline null.

    Attributes
    ----------
    z : (N,) ndarray of float64
        Robust z of the transformed score against the null (null standard deviations).
    log10_p : (N,) ndarray of float64
        log10 of the one-sided p-value under the Gaussian null (<= 0).
    log10_q : (N,) ndarray of float64
        log10 of the Benjamini-Hochberg adjusted p-value: the smallest false-discovery rate
        at which the site would still be reported (<= 0).
    significant : (N,) ndarray of bool
        ``q <= FDR_Q`` (the sites reported disordered).
    centre, scale : float
        The null's location and spread, natural-log units.
    """

    z: np.ndarray
    log10_p: np.ndarray
    log10_q: np.ndarray
    significant: np.ndarray
    centre: float
    scale: float


def bh_log_q(log_p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values, in natural logs (so z of 40 does not underflow).

    q_(i) = min over j >= i of p_(j) * n / j, capped at 1, for the p-values in ascending
    order. Valid under independence and under positive dependence (Benjamini & Yekutieli
    2001), which is what neighbouring sites sharing a neighbourhood median have.

    Parameters
    ----------
    log_p : (N,) array_like of float
        Natural log of the p-values (<= 0).

    Returns
    -------
    (N,) ndarray of float64
        Natural log of the adjusted p-values, in the input order.
    """
    lp = np.asarray(log_p, dtype=np.float64).ravel()
    n = lp.size
    if n == 0:
        return np.zeros(0)
    order = np.argsort(lp, kind="stable")
    ranked = lp[order] + math.log(n) - np.log(np.arange(1, n + 1))
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(ranked, 0.0)
    return out


def site_significance(
    score: np.ndarray, lattice_px: float, q: float = FDR_Q,
    reference: np.ndarray | Callable[[], np.ndarray] | None = None,
) -> SiteSignificance:
    """Per-site p-values of the disorder score against the crystal's own null; BH at ``q``.

    The score (:func:`local_disorder`) is taken as t = ln(score + s0) with s0 = 2 / a^2, the
    mean 1 - |psi4| that +-0.5 px position uncertainty gives a perfect lattice (bond a/sqrt 2,
    so angular error 1/(sqrt 6 * bond) rad per bond): the log makes the crystal's right tail,
    which position noise and detection errors stretch, close to Gaussian, and s0 keeps
    exact-lattice scores (0) finite. The null is Gaussian with the median of t as centre and
    the lower half's MAD (x 1.4826) as spread, at least NULL_FLOOR: disordered sites only
    ever raise the score, so the lower half belongs to the crystal even when a region is
    present. It is refitted NULL_ITERATIONS times on the sites not significant so far (the
    frame's crystalline majority). If that majority is lost (half the sites or more
    significant), the frame has no crystal to be measured against and nothing is reported.
    Unless the crystal is a minority that the lattice shows: when the median site is closer
    to random bond angles than to a perfect lattice (score > RANDOM_DISORDER / 2) and
    ``reference`` (the sites the cell indexes, :func:`rewardscope.science.lattice.indexed_sites`,
    crystal by geometry however few) holds at least MIN_ATOMS sites, a null fitted once on
    them is used instead if half the sites or more are significant against it. A view
    centred on an amorphous particle has most of its sites in the particle, and the
    majority's null was the particle's own: nothing was reported. A frame whose typical
    site is crystalline never asks for ``reference``.

    Parameters
    ----------
    score : (N,) array_like of float
        Disorder score of each site, in [0, 1] (0 = perfect square lattice).
    lattice_px : float
        Lattice spacing a, px.
    q : float, optional
        False-discovery rate in (0, 1) (default FDR_Q).
    reference : (N,) array_like of bool, or a callable returning it, optional
        Sites known to be crystal (indexed by the lattice); a callable is called only when
        the median site is disordered (see above).

    Returns
    -------
    SiteSignificance
        z, log10 p, log10 q and the significant sites; all empty for no sites, nothing
        significant for fewer than MIN_ATOMS sites.

    Raises
    ------
    ValueError
        If ``score`` is not 1-D with finite values in [0, 1], ``lattice_px`` is not a
        positive finite number or ``q`` is not in (0, 1).
    """
    s = np.asarray(score, dtype=np.float64)
    eps = 1e-9  # 1 - |psi4| may round a hair below 0
    if s.ndim != 1 or not np.all(np.isfinite(s)) or (
            s.size and (s.min() < -eps or s.max() > 1 + eps)):
        lo, hi = np.min(s, initial=np.inf), np.max(s, initial=-np.inf)
        raise ValueError("score must be a 1-D array of finite values in [0, 1], got shape "
                         f"{s.shape} with values in [{lo}, {hi}]")
    s = np.clip(s, 0.0, 1.0)
    if not (np.isscalar(lattice_px) and math.isfinite(lattice_px) and lattice_px > 0):
        raise ValueError(f"lattice_px must be a positive finite number, got {lattice_px!r}")
    if not (np.isscalar(q) and 0 < q < 1):
        raise ValueError(f"q must be in (0, 1), got {q!r}")
    n = s.size
    none = np.zeros(n, dtype=bool)
    if n < MIN_ATOMS:
        zeros = np.zeros(n)
        return SiteSignificance(zeros, zeros, zeros, none, 0.0, NULL_FLOOR)
    t = np.log(s + 2.0 / float(lattice_px) ** 2)

    def test(keep: np.ndarray) -> tuple:
        centre = float(np.median(t[keep]))
        below = centre - t[keep & (t <= centre)]
        scale = max(1.4826 * float(np.median(below)), NULL_FLOOR)
        z = (t - centre) / scale
        log_p = special.log_ndtr(-z)
        log_q = bh_log_q(log_p)
        return centre, scale, z, log_p, log_q, log_q <= math.log(q)

    keep = np.ones(n, dtype=bool)
    for _ in range(NULL_ITERATIONS):
        centre, scale, z, log_p, log_q, significant = test(keep)
        if 2 * int(significant.sum()) >= n:  # no crystalline majority left to define the null
            significant = none
            break
        if np.array_equal(~significant, keep):
            break
        keep = ~significant
    if reference is not None and float(np.median(s)) > RANDOM_DISORDER / 2.0:
        ref = np.asarray(reference() if callable(reference) else reference, dtype=bool)
        if ref.shape != (n,):
            raise ValueError(f"reference must have one entry per site ({n}), got {ref.shape}")
        if int(ref.sum()) >= MIN_ATOMS:
            by_lattice = test(ref)
            if 2 * int(by_lattice[-1].sum()) >= n:  # most sites are unlike the lattice's own
                centre, scale, z, log_p, log_q, significant = by_lattice
    ln10 = math.log(10.0)
    return SiteSignificance(z, log_p / ln10, log_q / ln10, significant, centre, scale)


def disorder_split(score: np.ndarray) -> float:
    """Otsu's threshold of the disorder score: the two-class split the frame itself suggests.

    The split value that maximises the between-class variance w0 * w1 * (mu1 - mu0)^2, i.e.
    the mask of the sites above it maximises ``order_contrast``. Significance says a site is
    not crystal noise; this says it sits on the disordered side rather than on the rim of a
    region. The neighbourhood median spreads a region's disorder half a bond onto the
    crystalline sites around it, enough to be significant against a clean crystal's narrow
    null: measured on simulated regions (a = 8-20 px, found and refined atoms), significance
    alone gave masks a rim too wide (median IoU 0.76), with this split 0.84.

    Parameters
    ----------
    score : (N,) array_like of float
        Disorder score of each site.

    Returns
    -------
    float
        Midpoint between the two sorted scores where the split falls; -inf (every site above
        it) for fewer than two distinct values.
    """
    v = np.sort(np.asarray(score, dtype=np.float64).ravel())
    n = v.size
    if n < 2 or v[0] == v[-1]:
        return -math.inf
    k = np.arange(1, n)  # sites below the split
    c = np.cumsum(v)[:-1]
    w0 = k / n
    mu0 = c / k
    mu1 = (v.sum() - c) / (n - k)
    between = w0 * (1.0 - w0) * (mu1 - mu0) ** 2
    between[v[1:] == v[:-1]] = -1.0  # a split must fall between distinct values
    i = int(np.argmax(between))
    return float(0.5 * (v[i] + v[i + 1]))


def candidate_sites(disorder: np.ndarray, sig: SiteSignificance, lattice_px: float
                    ) -> np.ndarray:
    """The sites a candidate mask may flag: significant, and disordered by more than half.

    Three tests, each for its own reason:

    * *significant* (:func:`site_significance`): not crystal noise, at a controlled FDR;
    * *closer to random than to the crystal*: score above the midpoint between the crystal's
      level (the null's centre, back in score units) and RANDOM_DISORDER. Significance alone
      says how sure, not how much: at low dose the crystal's null has a heavier tail than a
      Gaussian, and clusters of 10-13 sites at z 5-8 passed it on crystal-only frames
      (dose 10 e/px); their scores stay below this midpoint (~0.3), amorphous ones do not;
    * *above the frame's own split* (:func:`disorder_split`): not the rim of a region.

    Parameters
    ----------
    disorder : (N,) ndarray of float
        :func:`local_disorder` of each site.
    sig : SiteSignificance
        :func:`site_significance` of ``disorder``.
    lattice_px : float
        Lattice spacing a, px (as given to :func:`site_significance`).

    Returns
    -------
    (N,) ndarray of bool
        True for the sites that may be flagged.
    """
    out = np.asarray(sig.significant, dtype=bool).copy()
    if out.any():
        crystal = math.exp(sig.centre) - 2.0 / float(lattice_px) ** 2
        cut = max(0.5 * (crystal + RANDOM_DISORDER), disorder_split(disorder))
        out &= np.asarray(disorder) > cut
    return out


# --------------------------------------------------------------------------------------------
# GMM and mask
# --------------------------------------------------------------------------------------------


def disordered_posterior(
    x: np.ndarray, significant: np.ndarray, n_components: int, covariance_type: str
) -> np.ndarray:
    """Per-atom posterior of belonging to a disordered GMM component.

    A component is disordered when most of it (posterior-weighted) is significantly
    disordered sites (:func:`site_significance`); posteriors of all such components add up
    (with 3 components the GMM may split the amorphous sites themselves, e.g. by sublattice,
    and taking only one half gave compact, well-scored masks of half a region). If none
    qualifies, the single most significant component is used (the site gate in
    :func:`flag_sites` then decides).

    Parameters
    ----------
    x : (N, d) ndarray of float
        Standardised descriptors, one row per atom.
    significant : (N,) ndarray of bool or float
        1 for the sites that may be flagged (:func:`candidate_sites`), 0 for the others.
    n_components : int
        Mixture components.
    covariance_type : {"full", "tied", "diag", "spherical"}
        Covariance type.

    Returns
    -------
    (N,) ndarray of float64
        Posterior in [0, 1]; zeros when the mixture cannot be fitted (degenerate descriptors
        or an unknown ``covariance_type``).
    """
    try:
        gmm = mixtures.fit_gmm(x, int(n_components), covariance_type, seed=SEED,
                               reg_covar=1e-4)
        post = mixtures.posterior(gmm, x)
    except ValueError:  # ill-defined covariance (degenerate descriptors): nothing found
        return np.zeros(len(x))
    weight = post.sum(axis=0)
    share = (post * np.asarray(significant, dtype=np.float64)[:, None]).sum(axis=0)
    share /= np.maximum(weight, 1e-12)
    chosen = share > 0.5
    if not chosen.any():
        chosen = share == share.max()
    return post[:, chosen].sum(axis=1)


def flag_sites(post: np.ndarray, significant: np.ndarray, threshold: float) -> np.ndarray:
    """Disordered sites: GMM posterior above ``threshold`` *and* significantly disordered.

    Two witnesses must agree: the image (the GMM on the descriptors) and the geometry (bond
    order, tested against the crystal's own null at a controlled false-discovery rate by
    :func:`site_significance`). Without the second, a candidate whose "disordered" component
    caught atoms with odd patches but intact bonds (frame-edge rows, domain walls) flagged
    scattered crystal sites that the closing bridged into one frame-wide mask, which the
    shape rewards love (compactness ~0.88, perimeter ratio ~1.07). It is also what lets a
    crystal-only frame answer "nothing": no candidate can flag a site that is not
    significantly disordered (:func:`candidate_sites`), whatever its parameters.

    Parameters
    ----------
    post : (N,) ndarray of float
        :func:`disordered_posterior` of each atom.
    significant : (N,) ndarray of bool
        The sites that may be flagged (:func:`candidate_sites`) of each atom.
    threshold : float
        Posterior above which a site may be flagged, in [0, 1].

    Returns
    -------
    (N,) ndarray of bool
        True for the disordered sites.
    """
    return (post > threshold) & np.asarray(significant, dtype=bool)


def nearest_site_map(
    xy: np.ndarray, shape: tuple[int, int], reach: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Voronoi cells of the atoms on the pixel grid: nearest atom and distance to it per pixel.

    Computed once per frame and reused by every candidate's mask (:func:`mask_from_sites`).
    Without ``reach``: one Euclidean distance transform of the whole frame. With ``reach``:
    only pixels within ``reach`` px of a site are resolved (each site paints the disk around
    it, a numba ``nogil`` loop costing sites x disk area instead of the frame; measured
    ~10x faster on a 1024^2 frame); farther pixels get owner 0 and distance inf, which no
    mask uses when ``reach`` >= its disk (``DISK_FRAC`` lattice spacings).

    Parameters
    ----------
    xy : (N, 2) ndarray of float
        Atom positions x, y in px (rounded half up, clipped to the frame; of atoms sharing a
        pixel, the last one owns it).
    shape : (int, int)
        Frame (H, W) in px.
    reach : float, optional
        Distance in px up to which the map is resolved (default: everywhere).

    Returns
    -------
    owner : (H, W) ndarray of int64
        Index of the nearest atom (all 0 when there are none).
    dist : (H, W) ndarray of float64
        Distance to it, px (inf when there are none, or beyond ``reach``).
    """
    if len(xy) == 0:
        return np.zeros(shape, dtype=np.int64), np.full(shape, np.inf)
    iy, ix = _pixel_of(xy, shape)
    owner = np.full(shape, -1, dtype=np.int64)
    owner[iy, ix] = np.arange(len(xy))
    if reach is None:
        dist, (ry, rx) = ndimage.distance_transform_edt(owner < 0, return_indices=True)
        return owner[ry, rx], dist
    seeds = np.flatnonzero(owner.ravel() >= 0)
    sy, sx = np.divmod(seeds, shape[1])
    near, dist = kernels.nearest_within(np.stack([sx, sy], axis=1), shape, float(reach))
    ids = owner.ravel()[seeds]
    return np.where(near >= 0, ids[np.maximum(near, 0)], 0), dist


def mask_from_sites(
    flags: np.ndarray,
    xy: np.ndarray,
    owner: np.ndarray,
    dist: np.ndarray,
    lattice_px: float,
    min_sites: int = MIN_SITES,
) -> np.ndarray:
    """The amorphous mask of the flagged sites: their Voronoi cells, de-speckled, closed, filled.

    Flagged sites paint their Voronoi cell within DISK_FRAC lattice spacings. Clusters of
    fewer than ``min_sites`` flagged sites are removed *before* the closing, so scattered
    false positives cannot be bridged into one frame-wide region; again after it, for what
    the closing joined but still holds too few sites.

    Parameters
    ----------
    flags : (N,) ndarray of bool
        Flagged (disordered) sites, :func:`flag_sites`.
    xy : (N, 2) ndarray of float
        Site positions x, y in px.
    owner, dist : (H, W) ndarray
        :func:`nearest_site_map` of the sites.
    lattice_px : float
        Lattice spacing a in px (disk reach, closing radius a / 2).
    min_sites : int, optional
        Fewest flagged sites of a region (default MIN_SITES).

    Returns
    -------
    (H, W) ndarray of bool
        The mask; all False when nothing is flagged.
    """
    out = np.zeros(owner.shape, dtype=bool)
    if not flags.any():
        return out
    # Everything happens within the flagged sites' reach plus the closing's: outside it the
    # mask is empty whatever the steps do (the closing and hole filling of a crop with that
    # much empty margin are those of the whole frame), so a small region costs its size.
    reach = DISK_FRAC * lattice_px + 0.5 * lattice_px + 2.0
    fx, fy = xy[flags, 0], xy[flags, 1]
    y0 = max(0, int(math.floor(fy.min() - reach)))
    y1 = min(owner.shape[0], int(math.ceil(fy.max() + reach)) + 1)
    x0 = max(0, int(math.floor(fx.min() - reach)))
    x1 = min(owner.shape[1], int(math.ceil(fx.max() + reach)) + 1)
    if y0 >= y1 or x0 >= x1:
        return out
    crop = (slice(y0, y1), slice(x0, x1))
    local = xy[flags] - np.array([x0, y0], dtype=np.float64)
    mask = _drop_small(flags[owner[crop]] & (dist[crop] <= DISK_FRAC * lattice_px), local,
                       min_sites)
    closed = _close(mask, 0.5 * lattice_px)
    out[crop] = _drop_small(fill_holes(closed | mask), local, min_sites)
    return out


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes(mask)``, identical, in one labelling of the background.

    A hole is a 4-connected background component that does not reach the array border
    (scipy grows the outside in from the border by repeated cross-shaped dilations,
    ~19 ms on a 1024² crop; one ``ndimage.label`` finds the same components in ~3 ms).

    Parameters
    ----------
    mask : (H, W) array_like of bool

    Returns
    -------
    (H, W) ndarray of bool
        ``mask`` with its holes set.
    """
    m = np.asarray(mask, dtype=bool)
    labels, n = ndimage.label(~m)  # default structure: the cross, as scipy's fill
    if n == 0:
        return m.copy()
    outside = np.zeros(n + 1, dtype=bool)
    for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        outside[edge] = True
    outside[0] = False  # label 0 is the mask itself
    return ~outside[labels]


def _close(mask: np.ndarray, radius: float) -> np.ndarray:
    """Morphological closing by a Euclidean disk, via two distance transforms.

    Same result as ``binary_closing`` with a disk structure, but O(H*W) whatever the radius
    (measured on 384^2: equal at r = 6 px, 2x faster at 10, 5x at 15). The frame is
    edge-padded first, so regions touching the frame edge are not eroded from outside.
    Only the mask's bounding box plus the reach of the disk is transformed (the closing is
    empty farther out): regions a fraction of the frame cost that fraction.
    """
    pad = int(math.ceil(radius)) + 1
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return np.zeros_like(mask, dtype=bool)
    y0, y1 = max(0, rows[0] - pad), min(mask.shape[0], rows[-1] + pad + 1)
    x0, x1 = max(0, cols[0] - pad), min(mask.shape[1], cols[-1] + pad + 1)
    padded = np.ascontiguousarray(np.pad(mask[y0:y1, x0:x1], pad, mode="edge"))
    if CLOSE_BY_DISKS:
        dilated = _dilate_by_disks(padded, float(radius))
        closed = ~_dilate_by_disks(~dilated, float(radius))
    else:
        dilated = ndimage.distance_transform_edt(~padded) <= radius
        closed = ndimage.distance_transform_edt(dilated) > radius
    out = np.zeros_like(mask, dtype=bool)
    out[y0:y1, x0:x1] = closed[pad:-pad, pad:-pad]
    return out


@njit(cache=True, nogil=True)
def _dilate_by_disks(mask, radius):
    """``mask`` or within ``radius`` px (Euclidean, pixel centres) of it: ``EDT(~mask) <=
    radius``, exactly. The mask pixel nearest to any outside pixel has a 4-neighbour outside
    the mask (the step towards that pixel would be nearer otherwise), so disks stamped on
    those boundary pixels alone suffice: boundary x disk area instead of two passes over the
    box (measured ~10x less on the workflow's masks)."""
    height, width = mask.shape
    out = mask.copy()
    r = int(math.floor(radius))
    r2 = radius * radius
    for y in range(height):
        for x in range(width):
            if not mask[y, x]:
                continue
            if ((y > 0 and not mask[y - 1, x]) or (y < height - 1 and not mask[y + 1, x])
                    or (x > 0 and not mask[y, x - 1]) or (x < width - 1 and not mask[y, x + 1])):
                for dy in range(-r, r + 1):
                    yy = y + dy
                    if yy < 0 or yy >= height:
                        continue
                    for dx in range(-r, r + 1):
                        xx = x + dx
                        if 0 <= xx < width and dy * dy + dx * dx <= r2:
                            out[yy, xx] = True
    return out


def label_regions(
    mask: np.ndarray, xy: np.ndarray, log10_q: np.ndarray, significant: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The mask's regions and the significance of each: the strongest evidence inside it.

    A region's significance is -log10 of its q-value: the smallest Benjamini-Hochberg
    adjusted p-value of the significant sites inside it, i.e. the smallest false-discovery
    rate at which the region would still be reported (>= -log10 FDR_Q = 2 for every region
    the workflow reports). The per-site values saturate far out in the tail, where the
    Gaussian null is extrapolated: read 10 as "far above noise", not as a probability.

    Parameters
    ----------
    mask : (H, W) ndarray of bool
        Amorphous mask (:func:`mask_from_sites`).
    xy : (N, 2) ndarray of float
        Site positions x, y in px.
    log10_q : (N,) ndarray of float
        :attr:`SiteSignificance.log10_q` of the sites.
    significant : (N,) ndarray of bool
        :attr:`SiteSignificance.significant` of the sites.

    Returns
    -------
    labels : (H, W) ndarray of int16
        0 = no region, i = region i (8-connected components in raster order).
    significance : (R,) ndarray of float64
        -log10 q of region i at row i - 1; 0.0 for a region with no significant site.
    """
    labels = np.zeros(mask.shape, dtype=np.int16)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return labels, np.zeros(0)
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))  # raster order kept
    inner, n = ndimage.label(mask[box], structure=np.ones((3, 3), bool))
    labels[box] = inner
    lab = labels
    iy, ix = _pixel_of(xy[significant], mask.shape)
    region = lab[iy, ix]
    best = np.zeros(n + 1)
    np.maximum.at(best, region, -np.asarray(log10_q)[significant])
    return labels, best[1:]


def _drop_small(mask: np.ndarray, flagged_xy: np.ndarray, min_sites: int) -> np.ndarray:
    """``mask`` without its 8-connected components that hold < ``min_sites`` flagged sites."""
    lab, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    iy, ix = _pixel_of(flagged_xy, mask.shape)
    keep = np.bincount(lab[iy, ix], minlength=n + 1) >= min_sites
    keep[0] = False
    return keep[lab]


def _pixel_of(xy: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the rounded positions (half up, as the patch kernels), clipped."""
    h, w = shape
    ix = np.clip(np.floor(xy[:, 0] + 0.5).astype(np.int64), 0, w - 1)
    iy = np.clip(np.floor(xy[:, 1] + 0.5).astype(np.int64), 0, h - 1)
    return iy, ix


# --------------------------------------------------------------------------------------------
# reward
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# workflow
# --------------------------------------------------------------------------------------------


def _window_bounds(lattice_px: float) -> tuple[int, int]:
    """Patch half-size range: half a lattice spacing (own column) to 1.5 (two shells)."""
    return max(2, int(round(0.5 * lattice_px))), max(3, int(round(1.5 * lattice_px)))


class AmorphousWorkflow(Workflow):
    """Amorphous-region segmentation by GMM on atom descriptors (Barakati et al. 2024).

    ``lattice_px`` sizes the window dimension of the search space (the frame's own
    ``ctx.lattice_px`` is used for everything else).
    """

    name = "amorphous"
    thread_safe = True  # per-frame caches are shared dicts; see base.single_thread
    rewards = ("region_compactness", "normalised_perimeter", "order_contrast")
    needs = (ATOMS,)
    produces = (
        Output("amorphous_mask", MASK, clears_labels=True),
        Output("labels", LABELS, name="amorphous_labels"),
        Output("region_labels", MASK),
        Output("region_significance", PER_REGION),
    )

    def __init__(self, lattice_px: float = 12.0) -> None:
        lo, hi = _window_bounds(lattice_px)
        self.lattice_px = float(lattice_px)
        self.space = (
            Real(0.3, 0.99, name="threshold"),
            Categorical(list(COVARIANCE_TYPES), name="covariance_type"),
            Integer(lo, hi, name="window"),
            Integer(2, 3, name="n_components"),
        )

    def default_params(self, lattice_px: float) -> dict[str, Any]:
        """Tied covariance, 2 components, window half a lattice spacing (why: module doc)."""
        window = _window_bounds(lattice_px)[0]
        return {"threshold": 0.7, "covariance_type": "tied", "window": window, "n_components": 2}

    # -- per frame ---------------------------------------------------------------------------

    def prepare(self, ctx: FrameContext) -> None:
        """Local order and the Voronoi map depend on the atoms only: once per frame."""
        self.frame_state(ctx)

    def _max_window(self) -> int:
        return max(int(d.high) for d in self.space if d.name == "window")

    def frame_state(self, ctx: FrameContext) -> FrameState:
        """The parameter-independent part, cached in ``ctx.cache`` while ``ctx.atoms`` stays."""
        state = ctx.cache.get(CACHE_KEY)
        if state is None or state.source is not ctx.atoms:
            state = FrameState.build(ctx)
            ctx.cache[CACHE_KEY] = state
        return state

    def descriptors(self, ctx: FrameContext, window: int) -> np.ndarray:
        """(n_used, PCA_DIMS + 1) standardised descriptors for ``window``, cached per window."""
        st = self.frame_state(ctx)

        def compute() -> np.ndarray:
            with st.lock:  # one thread grows the ring table; the others read the grown one
                if st.rings is None or st.rings.reach < int(window):
                    # first the window asked for (a frame that tries one window pays for
                    # one), then, once a wider one is asked for, every window the space holds
                    reach = int(window) if st.rings is None else max(int(window),
                                                                     self._max_window())
                    st.rings = RingTable.build(ctx.image, st.xy, reach)
                rings = st.rings
            prof = patch_residuals(ctx.image, st.xy, st.sub, int(window), rings=rings)
            return np.column_stack([standardise_columns(prof),
                                    standardise_columns(st.disorder[:, None])])

        return once(st.descriptors, int(window), compute)

    # -- per candidate -----------------------------------------------------------------------

    def evaluate(self, ctx: FrameContext, params: dict[str, Any]) -> Evaluation:
        """Mask and labels for ``params`` (missing keys: defaults), scored by the 3 rewards.

        A frame without significant disorder (``FrameState.n_significant`` = 0) needs no
        mixture: every candidate's mask is empty, and the rewards score that as right.
        """
        p = {**self.default_params(ctx.lattice_px), **params}
        st = self.frame_state(ctx)
        if len(st.xy) < MIN_ATOMS or st.n_significant == 0:
            return self._result(st, np.zeros(ctx.shape, bool), np.zeros(len(st.xy)))
        post = self.posterior(ctx, st, int(p["window"]), int(p["n_components"]),
                              str(p["covariance_type"]))
        flags = flag_sites(post, st.candidates, float(p["threshold"]))
        key = np.packbits(flags).tobytes()
        return self._result(st, self._mask(ctx, st, flags, key), post, key)

    def _mask(self, ctx: FrameContext, st: FrameState, flags: np.ndarray,
              key: bytes) -> np.ndarray:
        """:func:`mask_from_sites` of ``flags``, cached per frame by the flagged set (``key``):
        the site gate makes many candidates (other thresholds, other fits) flag the same
        sites, and the mask depends on nothing else. Each candidate gets its own copy."""
        return once(st.masks, key, lambda: mask_from_sites(flags, st.xy, st.owner, st.dist,
                                                           ctx.lattice_px)).copy()

    def posterior(self, ctx: FrameContext, st: FrameState, window: int, n_components: int,
                  covariance_type: str) -> np.ndarray:
        """The GMM posterior, cached per frame: candidates that differ only in ``threshold``
        (the cheap part) reuse the fit (~80 % of an evaluation's time)."""
        def compute() -> np.ndarray:
            with single_thread():  # small matrices: OpenMP/BLAS threads only add overhead
                return disordered_posterior(self.descriptors(ctx, window), st.candidates,
                                            n_components, covariance_type)

        return once(st.posteriors, (window, n_components, covariance_type), compute)

    def _result(self, st: FrameState, mask: np.ndarray, post: np.ndarray,
                key: bytes | None = None) -> Evaluation:
        """Rewards and outputs of one mask. With too few atoms to fit a null the evidence is
        unknown (None: an empty mask scores worst); otherwise the rewards know whether the
        frame holds significant disorder (``n_significant``), so that "nothing" can be the
        best answer (docs/REWARDS.md, regions).

        Everything but the posterior depends on the mask alone, so with the mask's ``key``
        (its flagged set, see :meth:`_mask`) it is computed once per frame and mask: the
        rewards' connected components and the region labelling of a 1024² mask cost ~12 ms
        per candidate, and most candidates of a frame repeat a mask. Each candidate gets
        copies of the arrays."""
        def compute() -> tuple:
            used_labels = _labels_at(mask, st.xy)
            evidence = st.n_significant if len(st.xy) >= MIN_ATOMS else None
            rewards = {
                "region_compactness": region_compactness(mask, n_significant=evidence),
                "normalised_perimeter": normalised_perimeter(mask, n_significant=evidence),
                "order_contrast": order_contrast(st.disorder, used_labels,
                                                 n_significant=evidence),
            }
            regions, significance = label_regions(mask, st.xy, st.sig.log10_q,
                                                  st.sig.significant)
            return rewards, _labels_at(mask, st.all_xy), regions, significance, evidence

        part = compute() if key is None else once(st.results, key, compute)
        rewards, labels, regions, significance, evidence = part
        posterior = np.zeros(len(st.all_xy))
        posterior[st.used] = post
        output: dict[str, Any] = {
            "amorphous_mask": mask,
            "labels": labels.copy(),
            "region_labels": regions.copy(),
            "region_significance": significance.copy(),
            "posterior": posterior,
            "n_significant": evidence,
        }
        return Evaluation(rewards=dict(rewards), output=output)


@dataclass
class FrameState:
    """Parameter-independent work on one frame's atoms.

    ``used`` marks the atoms the analysis trusts: those at least ``EDGE_MARGIN`` lattice
    spacings inside the frame. A column whose centre is nearer the border is partly outside
    the field of view, so its found position and intensity are biased (measured: ~4 px error
    for LoG detections within 2 px of the border, vs ~0.4 px inside); such atoms formed a
    "disordered" GMM cluster of their own. They still get a label, from the mask.
    ``source`` is the ``ctx.atoms`` object this was built from: new atoms, new state.
    ``sig`` is the per-site significance of ``disorder`` (:func:`site_significance`);
    ``candidates`` the sites a candidate may flag (:func:`candidate_sites`);
    ``n_significant`` counts those that can make a region at all (that lie in the mask of
    all of them, :func:`mask_from_sites`): 0 = the frame shows no disordered region,
    whatever a candidate's parameters.
    """

    source: Any
    all_xy: np.ndarray
    used: np.ndarray
    xy: np.ndarray
    sub: np.ndarray
    disorder: np.ndarray
    owner: np.ndarray
    dist: np.ndarray
    sig: SiteSignificance
    candidates: np.ndarray
    n_significant: int
    descriptors: dict[int, np.ndarray] = field(default_factory=dict)
    rings: RingTable | None = None  # pixel sums around ``xy`` for the windows tried so far
    posteriors: dict[tuple, np.ndarray] = field(default_factory=dict)  # per mixture setting
    masks: dict[bytes, np.ndarray] = field(default_factory=dict)  # per flagged-site set
    results: dict[bytes, tuple] = field(default_factory=dict)  # rewards etc. per mask
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def build(cls, ctx: FrameContext) -> FrameState:
        all_xy = _atoms(ctx)
        used = ~_near_edge(all_xy, ctx.shape, EDGE_MARGIN * ctx.lattice_px)
        xy = all_xy[used]
        # classified on all the atoms, as every workflow does (the same split whichever
        # workflow of a wave classifies first)
        sub = sublattices(ctx.image, all_xy, ctx.sites)[used]
        owner, dist = nearest_site_map(xy, ctx.shape, DISK_FRAC * ctx.lattice_px + 1.0)
        margin = EDGE_MARGIN * ctx.lattice_px
        disorder = local_disorder(xy, ctx.shape, ctx.lattice_px, margin)
        lat = ctx.lattice
        sig = site_significance(disorder, ctx.lattice_px, reference=None if lat is None
                                else lambda: indexed_sites(lat, xy, ctx.shape))
        candidates = candidate_sites(disorder, sig, ctx.lattice_px)
        n_significant = 0
        if candidates.any():
            evidence = mask_from_sites(candidates, xy, owner, dist, ctx.lattice_px)
            iy, ix = _pixel_of(xy[candidates], ctx.shape)
            n_significant = int(evidence[iy, ix].sum())
        return cls(ctx.atoms, all_xy, used, xy, sub, disorder, owner, dist, sig, candidates,
                   n_significant)


def _atoms(ctx: FrameContext) -> np.ndarray:
    if ctx.atoms is None:
        return np.zeros((0, 2))
    return np.asarray(ctx.atoms, dtype=np.float64).reshape(-1, 2)


def _labels_at(mask: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """int16 per atom: the mask at its rounded position (1 amorphous, 0 crystalline)."""
    iy, ix = _pixel_of(xy, mask.shape)
    return mask[iy, ix].astype(np.int16)
