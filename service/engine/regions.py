"""Recommended regions: where to look next, ranked, from one frame's outputs and the session.

After each frame the engine turns the frame's published detections into candidate regions of
interest, each with a ``reason`` and the ``significance`` (-log10 p) of the detection it comes
from:

* ``wall``: each published domain wall segment; the box is the segment's bounding box padded by
  one lattice spacing on every side (so its centre is the segment's midpoint, on the wall);
  significance = its ``wall_significance`` (the frame's ``domain_significance`` when a wall
  producer publishes none).
* ``junction``: where two published walls meet or cross inside the frame (each segment extended
  by one lattice spacing, so a T-junction that stops just short counts); a square of
  :data:`JUNCTION_SIDE_SPACINGS` lattice spacings around the point; significance = the smaller
  of the two walls'.
* ``domain``: a domain of another polarization variant, read from the per-cell polarization
  map, when the frame's ``domain_significance`` says the frame is not one domain (p <
  10^-:data:`DOMAIN_MIN_SIGNIFICANCE`, the domains workflow's own null test) - also when no
  wall segment could be drawn (a small domain in a wide overview, a few pixels per cell: the
  walls of a domain lie on its outline, and a zoom onto its box finds them); a domain whose
  box a published wall crosses is suggested through its walls instead. Each cell's
  vector is averaged with its neighbours' (within 1.6 lattice spacings); cells whose direction
  bin (the ``novelty`` bins) is neither the majority's nor next to it are linked to those
  within 1.5 spacings; a connected group of at least :data:`DOMAIN_MIN_CELLS` cells is a
  candidate, box = the bounding box of its cells whose own vector lies on the group's side
  of the midpoint between the two means, padded by one spacing, anchor = the cell nearest
  their median. Significance = the smaller of the frame's ``domain_significance`` and a z-test of
  the group's mean (unsmoothed) polarization against the majority cells' along the
  difference of the two means (-log10 of the one-sided normal tail).
* ``amorphous``: each region of ``region_labels``: its bounding box; significance = its
  ``region_significance``; anchor = the region's pixel nearest its centroid.
* ``uncertainty``: where the latent model is unsure (when the ``latent`` workflow runs).
  Per key point (the rows of ``latent_scale``: the atoms, or ``keypoints`` without atoms),
  u = the mean log posterior standard deviation over the latent dimensions; a point is
  uncertain when u lies :data:`UNCERTAINTY_MIN_Z` robust standard deviations above the
  frame's median; groups of at least :data:`UNCERTAINTY_MIN_POINTS` as for ``instability``
  (same significance). A frame the model finds uniformly hard points nowhere in particular.
* ``novelty``: a polarization state not seen earlier in the session. The per-cell
  ``polarization`` vectors are binned by direction into eight 45-degree bins centred on the
  multiples of 45 degrees (so the <100> and <110> directions are bin centres, not edges); a bin
  is a *state* of the frame when it holds at least :data:`NOVELTY_MIN_CELLS` cells and
  :data:`NOVELTY_MIN_FRACTION` of them and more than either neighbouring bin (the cells noise
  scatters out of a state into the next bins are no state of their own). A state the session
  has not seen before is suggested, box = the 10-90 % percentile box of its cells, anchored at
  its cell nearest their median; the session's first frame with a polarization map sets the
  baseline and suggests none. Its significance is the number of cells in the state (a count,
  not a p-value).
* ``instability``: where the Pareto-optimal analyses disagree. For every per-atom label
  output (kind ``labels``: domains, amorphous sites) the engine compares the chosen
  candidate's labels with those of the other candidates on the frame's Pareto front (label
  ids matched by overlap) and gives each atom the share of them that label it differently
  (:func:`rewardscope.engine.session.label_instability`; the largest share over the label
  outputs). Atoms with a share >= :data:`INSTABILITY_MIN_SHARE` are linked to those within
  1.5 lattice spacings; a group of at least :data:`INSTABILITY_MIN_ATOMS` atoms is a
  candidate, box = its bounding box padded by a spacing. Significance: how much more
  unstable the box is than the frame: -log10 of the binomial tail P(X >= k), X ~ Bin(m, r),
  k of the box's m labelled atoms unstable, r = the frame's share of unstable atoms (a
  frame where the front disagrees everywhere points nowhere in particular). ``domain``,
  ``instability`` and ``uncertainty`` candidates below :data:`MIN_SIGNIFICANCE` are dropped.

A box longer than :data:`MAX_BOX_FRACTION` of the frame's longer side is cut to that side around
the candidate's *anchor* (a point inside the detection: the wall's midpoint, ...), so every
suggestion magnifies at least 2x and its centre stays on the detection.

Only detections that passed their workflow's significance tests are published upstream, so a
single-domain crystalline frame yields no candidate at all.

Score = ``regions_weights[reason]`` x f(significance) x visited penalty, with
f(s) = s / (s + :data:`SIGNIFICANCE_HALF`) (0 at s = 0, 1/2 at p = 10^-3, -> 1: it keeps the
order of strong detections instead of saturating) and the visited penalty of gpax's penalised
acquisition functions, prod over visited places of 1 - exp(-d^2 / (2 r^2)), r =
``regions_penalty_radius`` lattice spacings (converted to metres through the frame's pixel
size when it has one). *Visited* places are the centres of suggestions released or scanned
(:meth:`RegionState.visit`) and the fields of view of earlier frames; an earlier frame counts
for a candidate only when it imaged it at about the suggested magnification or closer (its
field of view at most :data:`FRAME_VISIT_FOV_RATIO` x the candidate's), so a stream of
overviews of the same place does not suppress what the overview shows. Distances are in
instrument metres when the frame and the visited place both have them, else in frame pixels.

Candidates are then merged: in descending score order, a candidate whose box overlaps an
already kept one with IoU > :data:`MERGE_IOU` is absorbed: the kept box grows to the union of
both, the kept (stronger) one's score, reason and significance stay. Candidates scoring below
:data:`MIN_SCORE` (e.g. right at a visited place) are dropped, and at most ``regions_max``
remain. Boxes are at least ``regions_min_px`` (0: one lattice spacing) on each side and
clipped to the frame.

Coordinates: pixel (x, y) (x = column) -> instrument = ``origin_m`` + R(rotation) @ ([x, y] *
``pixel_size_m``) (:func:`px_to_m`, inverse :func:`m_to_px`); ``box_m`` holds the instrument
positions of the box's corners (x0, y0) and (x1, y1) (with a scan rotation the box is a
rotated rectangle, ``rotation_rad`` says by how much), ``fov_m`` the longer box side,
``magnification`` = the frame's longer side / the box's longer side (>= 1).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rewardscope.protocol import REGION_REASONS
from rewardscope.science import tails

REASONS = REGION_REASONS
SIGNIFICANCE_HALF = 3.0
"""f(s) = s / (s + SIGNIFICANCE_HALF): a detection at p = 10^-3 scores half of a certain one."""
MERGE_IOU = 0.3
"""Candidates whose boxes overlap more than this (intersection over union) are merged."""
MIN_SCORE = 0.01
"""Candidates scoring less (e.g. at a visited place) are not suggested."""
MAX_BOX_FRACTION = 0.5
"""A box's side is at most this fraction of the frame's longer side (a suggestion zooms in at
least 2x), cut around the candidate's anchor: a wall across the whole frame would otherwise
suggest the frame itself."""
JUNCTION_SIDE_SPACINGS = 4.0
"""Side of a junction's box, lattice spacings."""
NOVELTY_BIN_DEG = 45.0
NOVELTY_MIN_CELLS = 8
NOVELTY_MIN_FRACTION = 0.1
NOVELTY_MIN_MAGNITUDE = 0.5
"""Cells whose displacement is below this fraction of the frame's median have no direction."""
DOMAIN_MIN_SIGNIFICANCE = 3.0
"""-log10 p the frame's domain homogeneity test must reach before a ``domain`` candidate."""
DOMAIN_MIN_CELLS = 12
"""Smallest group of cells of another variant suggested as a ``domain``."""
DOMAIN_SMOOTH_SPACINGS = 1.6
DOMAIN_LINK_SPACINGS = 1.5
INSTABILITY_MIN_SHARE = 0.5
"""An atom is unstable when at least this share of the other front candidates label it
differently from the chosen one."""
INSTABILITY_MIN_ATOMS = 12
"""Smallest group of unstable atoms suggested as ``instability``."""
UNCERTAINTY_MIN_Z = 3.0
"""A key point is uncertain when its mean log posterior spread lies this many robust standard
deviations (1.4826 x MAD) above the frame's median."""
UNCERTAINTY_MIN_POINTS = 12
"""Smallest group of uncertain key points suggested as ``uncertainty``."""
MIN_SIGNIFICANCE = 3.0
"""-log10 p a ``domain``, ``instability`` or ``uncertainty`` candidate must reach (the
workflows' detections pass their own tests at p < 10^-3 before they are published)."""
FRAME_VISIT_FOV_RATIO = 1.5
"""An earlier frame visited a candidate when its field of view was at most this x the
candidate's (it imaged the place at about the suggested magnification or closer)."""
VISITED_KEEP = 256
"""Visited places and released suggestions remembered per session (the most recent)."""


# ----------------------------------------------------------------------------- coordinates


def _rot(rotation_rad: float) -> np.ndarray:
    c, s = math.cos(rotation_rad), math.sin(rotation_rad)
    return np.array([[c, -s], [s, c]])


def px_to_m(xy_px: Any, pixel_size_m: float, origin_m: Sequence[float] | None = None,
            rotation_rad: float = 0.0) -> np.ndarray:
    """Frame pixels to instrument coordinates.

    Parameters
    ----------
    xy_px : array_like, shape (2,) or (N, 2)
        Pixel positions, x = column, y = row (px).
    pixel_size_m : float
        Side of one pixel (m), > 0.
    origin_m : sequence of 2 floats, optional
        Instrument position of pixel (0, 0) (m); (0, 0) when None.
    rotation_rad : float
        Scan rotation (rad), counter-clockwise from the instrument's x axis.

    Returns
    -------
    numpy.ndarray
        ``origin_m + R(rotation_rad) @ (xy_px * pixel_size_m)`` (m), the shape of ``xy_px``.
    """
    if not (pixel_size_m > 0 and math.isfinite(pixel_size_m)):
        raise ValueError(f"pixel_size_m must be positive and finite, got {pixel_size_m!r}")
    xy = np.asarray(xy_px, dtype=np.float64)
    o = np.zeros(2) if origin_m is None else np.asarray(origin_m, dtype=np.float64)
    return (xy * float(pixel_size_m)) @ _rot(rotation_rad).T + o


def m_to_px(xy_m: Any, pixel_size_m: float, origin_m: Sequence[float] | None = None,
            rotation_rad: float = 0.0) -> np.ndarray:
    """Instrument coordinates to frame pixels, the inverse of :func:`px_to_m`.

    Parameters
    ----------
    xy_m : array_like, shape (2,) or (N, 2)
        Instrument positions (m).
    pixel_size_m, origin_m, rotation_rad
        As in :func:`px_to_m`.

    Returns
    -------
    numpy.ndarray
        Pixel positions (px), x = column, y = row.
    """
    if not (pixel_size_m > 0 and math.isfinite(pixel_size_m)):
        raise ValueError(f"pixel_size_m must be positive and finite, got {pixel_size_m!r}")
    xy = np.asarray(xy_m, dtype=np.float64)
    o = np.zeros(2) if origin_m is None else np.asarray(origin_m, dtype=np.float64)
    return ((xy - o) @ _rot(rotation_rad)) / float(pixel_size_m)


@dataclass(frozen=True)
class FrameGeometry:
    """One frame's size and its pixel -> instrument transform (``pixel_size_m`` None:
    unknown, suggestions carry pixel coordinates only)."""

    shape: tuple[int, int]  # (H, W) px
    pixel_size_m: float | None = None
    origin_m: tuple[float, float] | None = None
    rotation_rad: float = 0.0

    @property
    def calibrated(self) -> bool:
        ps = self.pixel_size_m
        return ps is not None and math.isfinite(ps) and ps > 0

    def to_m(self, xy_px: Any) -> np.ndarray:
        """Pixels (px) to instrument (m); see :func:`px_to_m`."""
        return px_to_m(xy_px, float(self.pixel_size_m), self.origin_m, self.rotation_rad)

    def to_px(self, xy_m: Any) -> np.ndarray:
        """Instrument (m) to pixels (px); see :func:`m_to_px`."""
        return m_to_px(xy_m, float(self.pixel_size_m), self.origin_m, self.rotation_rad)


# ----------------------------------------------------------------------------- boxes


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes [x0, y0, x1, y1] (px); 0 for disjoint boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def cap_box(box: Sequence[float], max_side: float, anchor: Sequence[float] | None = None
            ) -> list[float]:
    """``box`` [x0, y0, x1, y1] (px) with each side longer than ``max_side`` cut to it,
    centred on ``anchor`` (the box's centre when None) as far as the box allows."""
    out = [float(v) for v in box]
    for lo, hi, i in ((0, 2, 0), (1, 3, 1)):
        if out[hi] - out[lo] > max_side:
            c = (out[lo] + out[hi]) / 2.0 if anchor is None else float(anchor[i])
            start = min(max(c - max_side / 2.0, out[lo]), out[hi] - max_side)
            out[lo], out[hi] = start, start + max_side
    return out


def fit_box(box: Sequence[float], min_side: float, shape: tuple[int, int]) -> list[float]:
    """``box`` grown symmetrically to ``min_side`` per side, shifted into and clipped to the
    frame ``shape`` (H, W): [x0, y0, x1, y1] (px)."""
    h, w = shape
    out = [float(v) for v in box]
    for lo, hi, size in ((0, 2, w), (1, 3, h)):
        side = out[hi] - out[lo]
        if side < min_side:
            grow = (min_side - side) / 2.0
            out[lo] -= grow
            out[hi] += grow
        if out[lo] < 0:
            out[hi] -= out[lo]
            out[lo] = 0.0
        if out[hi] > size:
            out[lo] -= out[hi] - size
            out[hi] = float(size)
        out[lo] = max(out[lo], 0.0)
    return out


# ----------------------------------------------------------------------------- candidates


def _point_segment_t(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    d = b - a
    n = float(d @ d)
    return float((p - a) @ d / n) if n > 0 else 0.0


def wall_candidates(walls: Sequence[Sequence[float]], significance: Any, spacing: float
                    ) -> list[dict]:
    """One candidate per wall segment [x0, y0, x1, y1] (px): its box padded by ``spacing``,
    anchored at the segment's midpoint."""
    sig = np.full(len(walls), np.nan) if significance is None else \
        np.asarray(significance, dtype=np.float64).reshape(-1)
    out = []
    for i, seg in enumerate(walls):
        x0, y0, x1, y1 = (float(v) for v in seg)
        s = float(sig[i]) if i < len(sig) else float("nan")
        out.append({"reason": "wall", "significance": s,
                    "anchor": [(x0 + x1) / 2.0, (y0 + y1) / 2.0],
                    "box_px": [min(x0, x1) - spacing, min(y0, y1) - spacing,
                               max(x0, x1) + spacing, max(y0, y1) + spacing]})
    return out


def junction_candidates(walls: Sequence[Sequence[float]], significance: Any, spacing: float,
                        shape: tuple[int, int]) -> list[dict]:
    """Where two wall segments meet or cross inside the frame (each extended by ``spacing``
    at both ends); significance = the smaller of the two walls'."""
    sig = np.full(len(walls), np.nan) if significance is None else \
        np.asarray(significance, dtype=np.float64).reshape(-1)
    h, w = shape
    half = JUNCTION_SIDE_SPACINGS * spacing / 2.0
    segs = [np.asarray(s, dtype=np.float64).reshape(2, 2) for s in walls]
    out = []
    for i in range(len(segs)):
        for j in range(i + 1, len(segs)):
            (a0, a1), (b0, b1) = segs[i], segs[j]
            da, db = a1 - a0, b1 - b0
            cross = da[0] * db[1] - da[1] * db[0]
            la, lb = float(np.hypot(*da)), float(np.hypot(*db))
            if la == 0 or lb == 0 or abs(cross) < 1e-9 * la * lb:  # parallel: no junction
                continue
            t = ((b0 - a0)[0] * db[1] - (b0 - a0)[1] * db[0]) / cross
            p = a0 + t * da
            ta, tb = t, _point_segment_t(p, b0, b1)
            if not (-spacing / la <= ta <= 1 + spacing / la
                    and -spacing / lb <= tb <= 1 + spacing / lb):
                continue
            if not (0 <= p[0] <= w and 0 <= p[1] <= h):
                continue
            both = [float(sig[k]) for k in (i, j) if k < len(sig) and np.isfinite(sig[k])]
            s = min(both) if len(both) == 2 else float("nan")
            out.append({"reason": "junction", "significance": s,
                        "box_px": [p[0] - half, p[1] - half, p[0] + half, p[1] + half]})
    return out


def amorphous_candidates(region_labels: Any, significance: Any) -> list[dict]:
    """One candidate per region of ``region_labels`` ((H, W) int, 0 = none, i = region i):
    its bounding box (pixel edges), significance = ``significance[i - 1]``."""
    if region_labels is None:
        return []
    lab = np.asarray(region_labels)
    if lab.ndim != 2 or not lab.any():
        return []
    sig = np.zeros(0) if significance is None else \
        np.asarray(significance, dtype=np.float64).reshape(-1)
    out = []
    for i in np.unique(lab[lab > 0]):
        rows, cols = np.nonzero(lab == i)
        s = float(sig[i - 1]) if i - 1 < len(sig) else float("nan")
        k = int(np.argmin((cols - cols.mean()) ** 2 + (rows - rows.mean()) ** 2))
        out.append({"reason": "amorphous", "significance": s,
                    "anchor": [cols[k] + 0.5, rows[k] + 0.5],
                    "box_px": [float(cols.min()), float(rows.min()), float(cols.max() + 1),
                               float(rows.max() + 1)]})
    return out


def polarization_states(cells: Any, polarization: Any) -> dict[int, np.ndarray]:
    """The frame's polarization states: direction bin (0..7, bin k centred on k x 45 degrees,
    angle of (dx, dy) in pixel axes) -> the (n, 2) centres (px) of its cells, for the bins
    holding at least :data:`NOVELTY_MIN_CELLS` cells and :data:`NOVELTY_MIN_FRACTION` of the
    cells with a direction, and more cells than either neighbouring bin."""
    if cells is None or polarization is None:
        return {}
    c = np.asarray(cells, dtype=np.float64).reshape(-1, 2)
    p = np.asarray(polarization, dtype=np.float64).reshape(-1, 2)
    if len(c) != len(p) or not len(p):
        return {}
    mag = np.hypot(p[:, 0], p[:, 1])
    ok = np.isfinite(mag) & np.all(np.isfinite(c), axis=1)
    if not ok.any():
        return {}
    ok &= mag >= NOVELTY_MIN_MAGNITUDE * float(np.median(mag[ok]))
    if not ok.any():
        return {}
    ang = np.degrees(np.arctan2(p[ok, 1], p[ok, 0]))
    bins = np.round(ang / NOVELTY_BIN_DEG).astype(int) % int(round(360 / NOVELTY_BIN_DEG))
    n_bins = int(round(360 / NOVELTY_BIN_DEG))
    counts = np.bincount(bins, minlength=n_bins)
    need = max(NOVELTY_MIN_CELLS, NOVELTY_MIN_FRACTION * int(ok.sum()))
    out = {}
    for b in np.flatnonzero(counts >= need):
        # a peak of the direction histogram: noise spills a state into its neighbour bins
        if counts[b] > counts[(b - 1) % n_bins] and counts[b] > counts[(b + 1) % n_bins]:
            out[int(b)] = c[ok][bins == b]
    return out


def domain_candidates(cells: Any, polarization: Any, spacing: float,
                      frame_significance: Any, walls: Sequence[Sequence[float]] = ()
                      ) -> list[dict]:
    """``domain`` candidates: connected groups of cells polarized unlike the frame's majority
    (see the module doc); none unless ``frame_significance`` (the frame's
    ``domain_significance``, -log10 p) reaches :data:`DOMAIN_MIN_SIGNIFICANCE`.

    Parameters
    ----------
    cells, polarization : (M, 2) array_like
        Cell centres and polarization vectors (px), row-aligned.
    spacing : float
        Lattice spacing, px.
    frame_significance : float or None
        -log10 p of the frame's "one domain" test.
    walls : sequence of [x0, y0, x1, y1], optional
        The frame's published wall segments (px): a group whose box one of them crosses is
        already suggested through its walls and is skipped.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    try:
        frame_s = float(frame_significance)
    except (TypeError, ValueError):
        return []
    if not (frame_s >= DOMAIN_MIN_SIGNIFICANCE) or cells is None or polarization is None:
        return []
    c = np.asarray(cells, dtype=np.float64).reshape(-1, 2)
    p = np.asarray(polarization, dtype=np.float64).reshape(-1, 2)
    ok = np.all(np.isfinite(c), axis=1) & np.all(np.isfinite(p), axis=1)
    c, p = c[ok], p[ok]
    if len(c) != len(p) or len(c) < 2 * DOMAIN_MIN_CELLS or not spacing > 0:
        return []
    tree = cKDTree(c)
    pairs = tree.query_pairs(DOMAIN_SMOOTH_SPACINGS * spacing, output_type="ndarray")
    n = len(c)
    adj = coo_matrix((np.ones(2 * len(pairs)), (np.r_[pairs[:, 0], pairs[:, 1]],
                                                 np.r_[pairs[:, 1], pairs[:, 0]])),
                     shape=(n, n)).tocsr()
    smooth = (adj @ p + p) / (np.asarray(adj.sum(axis=1)).ravel() + 1.0)[:, None]
    n_bins = int(round(360 / NOVELTY_BIN_DEG))
    ang = np.degrees(np.arctan2(smooth[:, 1], smooth[:, 0]))
    bins = np.round(ang / NOVELTY_BIN_DEG).astype(int) % n_bins
    major = int(np.argmax(np.bincount(bins, minlength=n_bins)))
    off = (bins - major) % n_bins
    other = (off >= 2) & (off <= n_bins - 2)
    majority = ~other & (off == 0)
    if other.sum() < DOMAIN_MIN_CELLS or majority.sum() < DOMAIN_MIN_CELLS:
        return []
    idx = np.flatnonzero(other)
    links = cKDTree(c[idx]).query_pairs(DOMAIN_LINK_SPACINGS * spacing, output_type="ndarray")
    graph = coo_matrix((np.ones(len(links)), (links[:, 0], links[:, 1])),
                       shape=(len(idx), len(idx)))
    n_groups, group = connected_components(graph, directed=False)
    pm = p[majority]
    mean_m, var_m = pm.mean(axis=0), pm.var(axis=0, ddof=1)
    t = np.linspace(0.0, 1.0, 11)[:, None]
    wall_pts = np.vstack([(1 - t) * np.asarray(w[:2], float) + t * np.asarray(w[2:4], float)
                          for w in walls]) if len(walls) else np.zeros((0, 2))
    out = []
    for g in range(n_groups):
        members = idx[group == g]
        if len(members) < DOMAIN_MIN_CELLS:
            continue
        pg = p[members]
        diff = pg.mean(axis=0) - mean_m
        norm_d = float(np.hypot(*diff))
        if not norm_d > 0:
            continue
        u = diff / norm_d
        se = math.sqrt(float(u ** 2 @ pg.var(axis=0, ddof=1)) / len(pg)
                       + float(u ** 2 @ var_m) / len(pm))
        z = norm_d / se if se > 0 else math.inf
        s = float(-tails.norm_logsf(z) / math.log(10.0)) if math.isfinite(z) else math.inf
        # the box: members whose own vector sides with the group (smoothing blurs the
        # outline by a cell: edge cells of the majority can fall in the group)
        own = (pg - 0.5 * (pg.mean(axis=0) + mean_m)) @ u > 0
        xy = c[members[own]] if own.sum() >= DOMAIN_MIN_CELLS else c[members]
        med = np.median(xy, axis=0)
        lo, hi = xy.min(axis=0) - spacing, xy.max(axis=0) + spacing
        if np.any(np.all((wall_pts >= lo) & (wall_pts <= hi), axis=1)):
            continue  # its walls were drawn: suggested as walls
        if min(s, frame_s) < MIN_SIGNIFICANCE:
            continue
        out.append({"reason": "domain", "significance": min(s, frame_s),
                    "anchor": xy[int(np.argmin(np.sum((xy - med) ** 2, axis=1)))].tolist(),
                    "box_px": [float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])]})
    return out


def flagged_groups(xy: Any, flagged: Any, valid: Any, spacing: float, reason: str,
                   min_points: int) -> list[dict]:
    """Candidates from flagged points: connected groups (links within
    :data:`DOMAIN_LINK_SPACINGS` lattice spacings) of at least ``min_points`` flagged points,
    box = a group's bounding box padded by a spacing, significance = -log10 of the binomial
    tail P(X >= k), X ~ Bin(m, r): k of the box's m valid points flagged, r = the frame's
    flagged share (a place flagged more densely than the frame as a whole); only groups
    reaching :data:`MIN_SIGNIFICANCE` are kept.

    Parameters
    ----------
    xy : (N, 2) array_like
        Point positions, px.
    flagged, valid : (N,) array_like of bool
        Points flagged / points that could be flagged at all.
    spacing : float
        Lattice spacing, px.
    reason : str
        The candidates' reason.
    min_points : int
        Smallest group.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    valid = np.asarray(valid, bool).ravel() & np.all(np.isfinite(xy), axis=1)
    bad = np.asarray(flagged, bool).ravel() & valid
    if bad.sum() < min_points or not spacing > 0:
        return []
    rate = float(bad.sum()) / float(valid.sum())
    idx = np.flatnonzero(bad)
    links = cKDTree(xy[idx]).query_pairs(DOMAIN_LINK_SPACINGS * spacing, output_type="ndarray")
    graph = coo_matrix((np.ones(len(links)), (links[:, 0], links[:, 1])),
                       shape=(len(idx), len(idx)))
    n_groups, group = connected_components(graph, directed=False)
    out = []
    for g in range(n_groups):
        members = xy[idx[group == g]]
        if len(members) < min_points:
            continue
        lo, hi = members.min(axis=0) - spacing, members.max(axis=0) + spacing
        inside = valid & np.all((xy >= lo) & (xy <= hi), axis=1)
        m, k = int(inside.sum()), int((inside & bad).sum())
        logp = tails.binom_logsf(k - 1, m, rate) if rate < 1.0 else 0.0
        sig = max(0.0, -logp / math.log(10.0))
        if sig < MIN_SIGNIFICANCE:
            continue
        med = np.median(members, axis=0)
        out.append({"reason": reason, "significance": sig,
                    "anchor": members[int(np.argmin(np.sum((members - med) ** 2,
                                                           axis=1)))].tolist(),
                    "box_px": [float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])]})
    return out


def instability_candidates(atoms: Any, share: Any, spacing: float) -> list[dict]:
    """``instability`` candidates: groups of atoms whose labels the Pareto front disputes
    (share >= :data:`INSTABILITY_MIN_SHARE`; see the module doc and :func:`flagged_groups`).

    Parameters
    ----------
    atoms : (N, 2) array_like
        Atom positions, px.
    share : (N,) array_like
        Per atom, the share (0..1) of the other front candidates labelling it differently;
        NaN = unlabelled.
    spacing : float
        Lattice spacing, px.
    """
    f = np.asarray(share, dtype=np.float64).ravel()
    if len(np.asarray(atoms).reshape(-1, 2)) != len(f):
        return []
    ok = np.isfinite(f)
    return flagged_groups(atoms, ok & (np.where(ok, f, 0.0) >= INSTABILITY_MIN_SHARE), ok,
                          spacing, "instability", INSTABILITY_MIN_ATOMS)


def uncertainty_candidates(points: Any, latent_scale: Any, spacing: float) -> list[dict]:
    """``uncertainty`` candidates: groups of key points the latent model encodes with
    unusually large posterior spread (see the module doc and :func:`flagged_groups`).

    Parameters
    ----------
    points : (N, 2) array_like
        The key points the latent rows belong to (atoms or ``keypoints``), px.
    latent_scale : (N, d) array_like
        Posterior standard deviations per latent dimension; NaN rows = not encoded.
    spacing : float
        Lattice spacing, px.
    """
    xy = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    sc = np.asarray(latent_scale, dtype=np.float64)
    if sc.ndim == 1:
        sc = sc[:, None]
    if sc.ndim != 2 or len(sc) != len(xy) or sc.shape[1] == 0:
        return []
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.mean(np.log(sc), axis=1)
    ok = np.isfinite(u)
    if ok.sum() < 2 * UNCERTAINTY_MIN_POINTS:
        return []
    med = float(np.median(u[ok]))
    mad = 1.4826 * float(np.median(np.abs(u[ok] - med)))
    if not mad > 0:
        return []
    z = np.where(ok, (u - med) / mad, 0.0)
    return flagged_groups(xy, ok & (z >= UNCERTAINTY_MIN_Z), ok, spacing, "uncertainty",
                          UNCERTAINTY_MIN_POINTS)


def novelty_candidates(states: dict[int, np.ndarray], seen: set[int] | None) -> list[dict]:
    """A candidate per state in ``states`` (see :func:`polarization_states`) not in ``seen``;
    none when ``seen`` is None (the session's first polarization map is the baseline)."""
    if seen is None:
        return []
    out = []
    for b, xy in sorted(states.items()):
        if b in seen:
            continue
        lo, hi = np.percentile(xy, 10, axis=0), np.percentile(xy, 90, axis=0)
        med = np.median(xy, axis=0)
        out.append({"reason": "novelty", "significance": float(len(xy)),
                    "anchor": xy[int(np.argmin(np.sum((xy - med) ** 2, axis=1)))].tolist(),
                    "box_px": [float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])]})
    return out


# ----------------------------------------------------------------------------- session state


@dataclass
class RegionState:
    """A session's memory for the suggestions: visited places, polarization states seen,
    the recent suggestions by id (so a released one can be named by id). Plain data."""

    visited: list[dict] = field(default_factory=list)
    """{"center_px": [x, y] | None, "center_m": [x, y] | None, "fov_px": float | None,
    "fov_m": float | None, "kind": "scan" | "frame"}; a scan's fov is None: it penalises
    every candidate near it."""
    seen_states: list[int] | None = None  # None until the first polarization map
    recent: dict[str, dict] = field(default_factory=dict)  # id -> visited-style entry

    def _keep(self) -> None:
        del self.visited[:-VISITED_KEEP]
        while len(self.recent) > VISITED_KEEP:
            self.recent.pop(next(iter(self.recent)))

    def visit(self, place: dict | str | None = None, *, center_px: Sequence[float] | None = None,
              center_m: Sequence[float] | None = None) -> dict:
        """Record a released or scanned place; later candidates near it score less.

        Parameters
        ----------
        place : dict or str, optional
            A suggestion (its ``center_m`` and box centre are used) or a suggestion id this
            session made (raises KeyError when unknown).
        center_px : sequence of 2 floats, optional
            The place in frame pixels (px), when no suggestion is given.
        center_m : sequence of 2 floats, optional
            The place in instrument coordinates (m).

        Returns
        -------
        dict
            The visited entry recorded.
        """
        if isinstance(place, str):
            if place not in self.recent:
                raise KeyError(f"no suggestion {place!r} in this session")
            entry = dict(self.recent[place])
        elif isinstance(place, dict):
            b = place.get("box_px")
            cpx = None if b is None else [(b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0]
            entry = {"center_px": cpx, "center_m": place.get("center_m")}
        else:
            if center_px is None and center_m is None:
                raise ValueError("visit needs a suggestion, an id, center_px or center_m")
            entry = {"center_px": None if center_px is None else [float(v) for v in center_px],
                     "center_m": None if center_m is None else [float(v) for v in center_m]}
        for k in ("center_px", "center_m"):
            v = entry.get(k)
            if v is not None and (len(v) != 2 or not all(math.isfinite(float(x)) for x in v)):
                raise ValueError(f"{k} must be two finite numbers, got {v!r}")
        entry = {"center_px": entry.get("center_px"), "center_m": entry.get("center_m"),
                 "fov_px": None, "fov_m": None, "kind": "scan"}
        self.visited.append(entry)
        self._keep()
        return entry

    def penalty(self, center_px: np.ndarray, fov_px: float, geo: FrameGeometry,
                radius_px: float) -> float:
        """prod over visited places of 1 - exp(-d^2 / (2 r^2)); see the module docstring."""
        cal = geo.calibrated
        c_m = geo.to_m(center_px) if cal else None
        r_m = radius_px * float(geo.pixel_size_m) if cal else None
        fov_m = fov_px * float(geo.pixel_size_m) if cal else None
        out = 1.0
        for v in self.visited:
            if cal and v.get("center_m") is not None:
                d2 = float(np.sum((np.asarray(v["center_m"]) - c_m) ** 2))
                r, vf, cf = r_m, v.get("fov_m"), fov_m
            elif v.get("center_px") is not None and (not cal or v.get("center_m") is None):
                d2 = float(np.sum((np.asarray(v["center_px"]) - center_px) ** 2))
                r, vf, cf = radius_px, v.get("fov_px"), fov_px
            else:  # only comparable in the other frame of reference
                continue
            if vf is not None and vf > FRAME_VISIT_FOV_RATIO * cf:
                continue  # an overview, not a visit of this place
            out *= 1.0 - math.exp(-d2 / (2.0 * r * r))
        return out

    def add_frame(self, geo: FrameGeometry) -> None:
        """Record a frame's own field of view as a visited place."""
        h, w = geo.shape
        c = np.array([w / 2.0, h / 2.0])
        self.visited.append({
            "center_px": c.tolist(), "fov_px": float(max(h, w)), "kind": "frame",
            "center_m": geo.to_m(c).tolist() if geo.calibrated else None,
            "fov_m": float(max(h, w)) * float(geo.pixel_size_m) if geo.calibrated else None})
        self._keep()

    def state_dict(self) -> dict:
        """Plain data for checkpoints."""
        return {"visited": [dict(v) for v in self.visited],
                "seen_states": None if self.seen_states is None else list(self.seen_states),
                "recent": {k: dict(v) for k, v in self.recent.items()}}

    @classmethod
    def from_state_dict(cls, state: dict | None) -> RegionState:
        """The inverse of :meth:`state_dict` (None or {}: a fresh state)."""
        state = state or {}
        seen = state.get("seen_states")
        return cls(visited=[dict(v) for v in state.get("visited", [])],
                   seen_states=None if seen is None else [int(s) for s in seen],
                   recent={str(k): dict(v) for k, v in state.get("recent", {}).items()})


# ----------------------------------------------------------------------------- ranking


def significance_factor(s: float) -> float:
    """f(s) = s / (s + :data:`SIGNIFICANCE_HALF`) for s >= 0; 0 for NaN or s <= 0."""
    if not (s > 0):
        return 0.0
    if math.isinf(s):
        return 1.0
    return s / (s + SIGNIFICANCE_HALF)


def suggest(*, walls: Sequence[Sequence[float]], arrays: dict[str, Any],
            scalars: dict[str, Any], geo: FrameGeometry, spacing_px: float, settings: Any,
            state: RegionState, instability: tuple[Any, Any] | None = None,
            atoms: Any = None) -> list[dict]:
    """The frame's ranked suggestions (the shared contract's plain dicts), best first.

    Parameters
    ----------
    walls : sequence of [x0, y0, x1, y1]
        The frame's published wall segments (px).
    arrays : dict
        The frame's named arrays: ``wall_significance``, ``region_labels``,
        ``region_significance``, ``cells``, ``polarization`` are read when present.
    scalars : dict
        The frame's scalars (``domain_significance``: the walls' fallback significance).
    geo : FrameGeometry
        The frame's size and pixel -> instrument transform.
    spacing_px : float
        The lattice spacing (px): box padding, minimum box side, penalty radius unit.
    settings : ServiceConfig
        ``regions_mode``, ``regions_max``, ``regions_min_px``, ``regions_weights``,
        ``regions_penalty_radius``.
    state : RegionState
        The session's memory; its polarization states and the frame's field of view are
        recorded (also with ``regions_mode = "off"``, which suggests nothing).
    instability : (atoms (N, 2), share (N,)), optional
        Per atom, the share of the other Pareto-optimal candidates that label it differently
        (the engine's :func:`~rewardscope.engine.session.label_instability`).
    atoms : (N, 2) array_like, optional
        The frame's atoms: the rows of ``latent_scale`` when the frame has no ``keypoints``.

    Returns
    -------
    list of dict
        At most ``regions_max`` suggestions, descending score.
    """
    spacing = float(spacing_px) if spacing_px and spacing_px > 0 else 1.0
    states = polarization_states(arrays.get("cells"), arrays.get("polarization"))
    seen = None if state.seen_states is None else set(state.seen_states)
    out: list[dict] = []
    if settings.regions_mode != "off" and settings.regions_max > 0:
        out = _rank(walls, arrays, scalars, geo, spacing, settings, state, states, seen,
                    instability, atoms)
    if states:
        state.seen_states = sorted((seen or set()) | set(states))
    state.add_frame(geo)
    return out


def _rank(walls: Sequence[Sequence[float]], arrays: dict[str, Any], scalars: dict[str, Any],
          geo: FrameGeometry, spacing: float, settings: Any, state: RegionState,
          states: dict[int, np.ndarray], seen: set[int] | None,
          instability: tuple[Any, Any] | None = None, atoms: Any = None) -> list[dict]:
    wall_sig = arrays.get("wall_significance")
    if wall_sig is None and walls:
        ds = scalars.get("domain_significance")
        wall_sig = np.full(len(walls), float(ds) if ds is not None else np.nan)
    cands = (wall_candidates(walls, wall_sig, spacing)
             + junction_candidates(walls, wall_sig, spacing, geo.shape)
             + domain_candidates(arrays.get("cells"), arrays.get("polarization"), spacing,
                                 scalars.get("domain_significance"), walls)
             + amorphous_candidates(arrays.get("region_labels"),
                                    arrays.get("region_significance"))
             + novelty_candidates(states, seen)
             + (instability_candidates(*instability, spacing) if instability else [])
             + _uncertainty(arrays, atoms, spacing))
    min_side = float(settings.regions_min_px) or spacing
    radius_px = float(settings.regions_penalty_radius) * spacing
    weights = settings.regions_weights or {}
    max_side = max(MAX_BOX_FRACTION * max(geo.shape), min_side)
    for c in cands:
        c["box_px"] = fit_box(cap_box(c["box_px"], max_side, c.get("anchor")), min_side,
                              geo.shape)
        b = c["box_px"]
        centre = np.array([(b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0])
        fov = max(b[2] - b[0], b[3] - b[1])
        c["score"] = (float(weights.get(c["reason"], 1.0))
                      * significance_factor(c["significance"])
                      * state.penalty(centre, fov, geo, radius_px))
    cands.sort(key=lambda c: -c["score"])
    kept: list[dict] = []
    for c in cands:
        for k in kept:
            if iou(k["box_px"], c["box_px"]) > MERGE_IOU:
                kb, cb = k["box_px"], c["box_px"]
                k["box_px"] = [min(kb[0], cb[0]), min(kb[1], cb[1]), max(kb[2], cb[2]),
                               max(kb[3], cb[3])]
                break
        else:
            kept.append(c)
    kept = [c for c in kept if c["score"] >= MIN_SCORE][:int(settings.regions_max)]
    return [_suggestion(c, geo, state) for c in kept]


def _uncertainty(arrays: dict[str, Any], atoms: Any, spacing: float) -> list[dict]:
    scale = arrays.get("latent_scale")
    if scale is None:
        return []
    points = arrays.get("keypoints")
    if points is None or len(points) != len(scale):
        points = atoms
    if points is None:
        return []
    return uncertainty_candidates(points, scale, spacing)


def _suggestion(c: dict, geo: FrameGeometry, state: RegionState) -> dict:
    h, w = geo.shape
    x0, y0, x1, y1 = (float(v) for v in c["box_px"])
    side = max(x1 - x0, y1 - y0)
    centre = [(x0 + x1) / 2.0, (y0 + y1) / 2.0]
    box_m = center_m = fov_m = None
    if geo.calibrated:
        corners = geo.to_m([[x0, y0], [x1, y1]])
        box_m = [float(corners[0, 0]), float(corners[0, 1]), float(corners[1, 0]),
                 float(corners[1, 1])]
        center_m = [float(v) for v in geo.to_m(centre)]
        fov_m = side * float(geo.pixel_size_m)
    s = {"id": uuid.uuid4().hex, "score": float(c["score"]), "reason": c["reason"],
         "significance": float(c["significance"]), "box_px": [x0, y0, x1, y1],
         "box_m": box_m, "center_m": center_m, "fov_m": fov_m,
         "rotation_rad": float(geo.rotation_rad),
         "magnification": max(1.0, float(max(h, w)) / side) if side > 0 else 1.0}
    state.recent[s["id"]] = {"center_px": centre, "center_m": center_m}
    state._keep()
    return s
