"""The polarization map: each B column's displacement from the centre of its A-site cage.

In a [001] projection of an ABO3 perovskite every B column sits at the centre of a square of
four A columns, a / sqrt(2) from each; a ferroelectric distortion moves it off that centre
along the local polarization (displacement ~0.01-0.1 a: Ti in PbTiO3, Fe in BiFeO3). So the
map is, per unit cell, the cell centre (the mean of the four A columns) and the B column's
offset from it, measured on sub-pixel positions (:mod:`rewardscope.science.refine`). The sign
convention is the B-displacement one: the ionic dipole points the same way; in the
convention of the A-site/oxygen displacement it points the other way.

Only complete cages count: a B column gets a cell when its four nearest A columns all lie
within ``tolerance`` (relative) of a / sqrt(2), one in each quadrant around it (the angular
gaps between them, walking round, all between 45 and 135 degrees). A B column at the frame
edge (a cage column outside the frame), next to a missed or spurious A column, or in an
amorphous region gets no cell rather than a vector measured from a lopsided "centre": a
missing cage column moves the mean of the rest by a / (2 sqrt(2)) ~ 0.35 a, several times
the displacements being measured. In an amorphous region random columns sometimes make such
a cage (measured: 9 of 59 cells of a 2x zoom into an amorphous region, arrows pointing
anywhere), so with the frame's ``lattice`` a B column must also be on it: B columns one
cell vector away (:func:`rewardscope.science.lattice.indexed_sites` among the B columns).

Unlike :func:`rewardscope.science.descriptors.cage_centres` (which predicts where a site
*would* be from a frame-average cage vector, for patch centring), the cell centre here is the
plain mean of the four cage columns: no frame-average offset is folded in, so a uniform
polarization is measured, not subtracted.

Coordinates: ``xy[:, 0]`` = x = column, ``xy[:, 1]`` = y = row, in pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from rewardscope.science import kernels
from rewardscope.science.lattice import Lattice, indexed_sites

__all__ = ["CAGE_TOLERANCE", "PolarizationMap", "polarization_map", "to_picometres"]

CAGE_TOLERANCE = 0.3
"""A cage column lies within a / sqrt(2) * (1 +- this) of its B column. 0.3 admits B
displacements up to ~0.2 a and lattice-spacing errors of ~15 %, and keeps the same-sublattice
neighbours (at a = 1.41 a / sqrt(2)) out."""
MIN_GAP_DEG, MAX_GAP_DEG = 45.0, 135.0
"""Angular gaps between consecutive cage columns around the B column (nominally 90 degrees)."""


@dataclass(frozen=True)
class PolarizationMap:
    """Per unit cell: centre and B-column displacement, and which columns made it.

    Attributes
    ----------
    cells : (M, 2) ndarray of float64
        Cell centres x, y in px: the mean of the four A columns of each complete cage.
    polarization : (M, 2) ndarray of float64
        B-column displacement dx, dy from its cell centre, px.
    site : (M,) ndarray of int64
        Index of each cell's B column in the input positions.
    cage : (M, 4) ndarray of int64
        Indices of each cell's four A columns in the input positions.
    """

    cells: np.ndarray
    polarization: np.ndarray
    site: np.ndarray
    cage: np.ndarray

    def __len__(self) -> int:
        return int(self.cells.shape[0])


def _empty() -> PolarizationMap:
    return PolarizationMap(cells=np.zeros((0, 2)), polarization=np.zeros((0, 2)),
                           site=np.zeros(0, np.int64), cage=np.zeros((0, 4), np.int64))


def polarization_map(
    xy: np.ndarray, sites: np.ndarray, lattice_px: float, tolerance: float = CAGE_TOLERANCE,
    lattice: Lattice | None = None, shape: tuple[int, int] | None = None,
) -> PolarizationMap:
    """Cell centres and B-column displacements of every complete A-site cage (module doc).

    Parameters
    ----------
    xy : (N, 2) array_like of float
        Column positions x, y in px (sub-pixel: :func:`rewardscope.science.refine.
        refine_columns`).
    sites : (N,) array_like of int
        Site class of each column: 0 = A (bright, the cage), 1 = B (the displaced column);
        other values are ignored.
    lattice_px : float
        Lattice spacing a in px (cage columns are nominally a / sqrt(2) from their B column).
    tolerance : float, optional
        Relative deviation from a / sqrt(2) a cage column may have (default CAGE_TOLERANCE),
        in (0, 0.41) so that same-sublattice neighbours never count.
    lattice : Lattice, optional
        The frame's cell (px): a B column must have B columns one cell vector away.
    shape : (int, int), optional
        Frame (H, W) in px, required with ``lattice`` (translates outside it are not asked for).

    Returns
    -------
    PolarizationMap
        One row per B column with a complete cage, in input order; empty (M = 0) when there
        are no columns, only one sublattice, or no complete cage.

    Raises
    ------
    ValueError
        If ``xy`` is not (N, 2) finite, ``sites`` not N integers, ``lattice_px`` not finite
        and > 0, or ``tolerance`` outside (0, 0.41).
    """
    pts = kernels.as_points(xy, "xy")
    lab = np.asarray(sites).reshape(-1)
    if lab.shape[0] != pts.shape[0]:
        raise ValueError(f"sites must have one entry per column ({pts.shape[0]}), "
                         f"got {lab.shape[0]}")
    if lab.size and not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"sites must be integers (0 = A, 1 = B), got dtype {lab.dtype}")
    if not (np.isscalar(lattice_px) and np.isfinite(lattice_px) and lattice_px > 0):
        raise ValueError(f"lattice_px must be a finite number > 0, got {lattice_px!r}")
    if not (np.isscalar(tolerance) and 0 < tolerance < math.sqrt(2.0) - 1.0):
        raise ValueError(f"tolerance must lie in (0, {math.sqrt(2.0) - 1.0:.3f}), "
                         f"got {tolerance!r}")
    a_idx = np.flatnonzero(lab == 0)
    b_idx = np.flatnonzero(lab == 1)
    if a_idx.size < 4 or b_idx.size == 0:
        return _empty()
    d0 = float(lattice_px) / math.sqrt(2.0)
    a_xy, b_xy = pts[a_idx], pts[b_idx]
    dist, nn = cKDTree(a_xy).query(b_xy, k=4, distance_upper_bound=(1.0 + tolerance) * d0)
    complete = np.all(np.isfinite(dist), axis=1) & np.all(dist >= (1.0 - tolerance) * d0, axis=1)
    if not complete.any():
        return _empty()
    nn = nn[complete]
    b_sel = b_xy[complete]
    cage = a_xy[nn]  # (M, 4, 2)
    rel = cage - b_sel[:, None, :]
    ang = np.sort(np.arctan2(rel[..., 1], rel[..., 0]), axis=1)
    gaps = np.degrees(np.diff(np.concatenate([ang, ang[:, :1] + 2.0 * np.pi], axis=1), axis=1))
    square = np.all((gaps >= MIN_GAP_DEG) & (gaps <= MAX_GAP_DEG), axis=1)
    if lattice is not None:  # and the B column on the lattice of the B columns
        if shape is None:
            raise ValueError("shape is required with lattice")
        square[square] = indexed_sites(lattice, b_xy, shape,
                                       of=np.flatnonzero(complete)[square])
    if not square.any():
        return _empty()
    centres = cage[square].mean(axis=1)
    return PolarizationMap(cells=centres, polarization=b_sel[square] - centres,
                           site=b_idx[complete][square].astype(np.int64),
                           cage=a_idx[nn[square]].astype(np.int64))


def to_picometres(vectors: np.ndarray, pixel_size_m: float) -> np.ndarray:
    """Displacements in px -> pm.

    Parameters
    ----------
    vectors : (M, 2) array_like of float
        Displacements dx, dy in px.
    pixel_size_m : float
        Metres per pixel (the frame header's ``pixel_size_m``), finite and > 0.

    Returns
    -------
    (M, 2) ndarray of float64
        Displacements dx, dy in pm.

    Raises
    ------
    ValueError
        If ``pixel_size_m`` is not a finite number > 0.
    """
    if not (np.isscalar(pixel_size_m) and np.isfinite(pixel_size_m) and pixel_size_m > 0):
        raise ValueError(f"pixel_size_m must be a finite number > 0, got {pixel_size_m!r}")
    return np.asarray(vectors, dtype=np.float64).reshape(-1, 2) * (float(pixel_size_m) * 1e12)
