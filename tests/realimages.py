"""Real frames and their independent reference: atomap's SrTiO3 crops, refined by atomap itself.

The atomap wheel (a dev dependency, so ``make install`` brings the files; nothing is downloaded
at test time) ships two experimental 400 x 380 crops of one SrTiO3 area, float16, in HyperSpy's
HDF5 format: an annular dark-field image (``ADF``, columns bright) and the annular bright-field
image of the same area (``ABF``, columns dark). The projection is rectangular: rows of columns
29.5 px apart, along each row a bright and a dim column alternate 21 px apart (cell 42 x 29.5
px). The files store the pixel size (0.00933) without a unit; atomap's own tests read it as nm
(their 0.15 nm peak separation), and 0.3905 nm / 0.00933 nm = 41.9 px matches the measured 42 px
period along the rows, so it is nm.

The reference is atomap's standard refinement (Nord et al., Adv. Struct. Chem. Imaging 2017):
``get_atom_positions`` (peak finding) at a separation of 12 px (0.11 nm, about 0.6 of the
21 px nearest-column spacing, so both the bright and the dim columns are found), then
``Sublattice.refine_atom_positions_using_center_of_mass`` and
``refine_atom_positions_using_2d_gaussian`` (atomap's defaults: 40 % of the nearest-neighbour
distance as the fitting window). For the ABF the image is inverted first, since atomap looks
for bright columns. It takes a few seconds per image and is computed in the process that asks.

Used by ``tests/test_real_images.py`` and ``benchmarks/bench_quality.py``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

# name -> (file in atomap/tests/datasets, columns dark)
IMAGES: dict[str, tuple[str, bool]] = {
    "ADF": ("test_ADF_cropped.hdf5", False),
    "ABF": ("test_ABF_cropped.hdf5", True),
}
SEPARATION_PX = 12  # atomap peak-finding separation; see the module docstring
SRTIO3_A_NM = 0.3905  # pseudocubic lattice constant of SrTiO3


def image_path(name: str) -> Path:
    """Path of a real image (``"ADF"`` or ``"ABF"``) inside the installed atomap package."""
    import atomap

    if name not in IMAGES:
        raise ValueError(f"`name` must be one of {sorted(IMAGES)}, got {name!r}")
    path = Path(atomap.__file__).resolve().parent / "tests" / "datasets" / IMAGES[name][0]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: atomap {atomap.__version__} does not ship it")
    return path


def load_hyperspy(name: str) -> tuple[np.ndarray, float]:
    """The image as HyperSpy reads it: (float32 (rows, cols) pixels, pixel size in nm)."""
    with warnings.catch_warnings():
        # HyperSpy 2.5 warns about its own lazy imports and deprecates `reader` (for
        # `file_format`, which older versions lack)
        warnings.simplefilter("ignore")
        import hyperspy.api as hs

        s = hs.load(str(image_path(name)), reader="HSPY")
    return np.asarray(s.data, dtype=np.float32), float(s.axes_manager[0].scale)


def atomap_reference(name: str, separation: int = SEPARATION_PX) -> np.ndarray:
    """Atomap's refined column positions, (N, 2) float64, x = column, y = row, px.

    Peak finding at ``separation`` px on float32 data (inverted for dark-column images), then
    centre-of-mass and 2-D Gaussian refinement, atomap's defaults otherwise.
    """
    data, _scale = load_hyperspy(name)
    if IMAGES[name][1]:
        data = data.max() - data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import atomap.api as am
        import hyperspy.api as hs

        signal = hs.signals.Signal2D(data)
        peaks = am.get_atom_positions(signal, separation=separation)
        sub = am.Sublattice(peaks, image=data)
        sub.find_nearest_neighbors()
        sub.refine_atom_positions_using_center_of_mass(show_progressbar=False)
        sub.refine_atom_positions_using_2d_gaussian(show_progressbar=False)
    return np.column_stack([sub.x_position, sub.y_position]).astype(np.float64)


def nearest_neighbour_px(xy: np.ndarray) -> float:
    """Median nearest-neighbour distance of a point set, px."""
    from scipy.spatial import cKDTree

    d, _ = cKDTree(xy).query(xy, k=2)
    return float(np.median(d[:, 1]))


def interior(xy: np.ndarray, shape: tuple[int, int], margin: float) -> np.ndarray:
    """Boolean mask of the points at least ``margin`` px inside a frame of ``shape``."""
    h, w = shape
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    return ((xy[:, 0] >= margin - 0.5) & (xy[:, 0] <= w - 0.5 - margin)
            & (xy[:, 1] >= margin - 0.5) & (xy[:, 1] <= h - 0.5 - margin))


def reference_lattice(name: str, xy: np.ndarray) -> dict[str, list[float]]:
    """The cell of the bright-column sublattice, fitted to reference columns: {"a", "b"} px.

    The columns are split into bright and dim by their (smoothed, dark-inverted) intensity;
    the two shortest independent nearest-neighbour vectors of the bright ones seed integer
    indices, and a least-squares fit of all bright columns gives the cell.
    """
    from scipy.ndimage import gaussian_filter
    from scipy.spatial import cKDTree

    data, _ = load_hyperspy(name)
    if IMAGES[name][1]:
        data = data.max() - data
    smooth = gaussian_filter(data.astype(np.float64), 2.0)
    ix = np.clip(np.rint(xy[:, 0]).astype(int), 0, data.shape[1] - 1)
    iy = np.clip(np.rint(xy[:, 1]).astype(int), 0, data.shape[0] - 1)
    level = smooth[iy, ix]
    lo, hi = np.percentile(level, [10, 90])
    bright = xy[level > 0.5 * (lo + hi)]
    _, nb = cKDTree(bright).query(bright, k=5)
    vecs = (bright[nb[:, 1:]] - bright[:, None]).reshape(-1, 2)
    vecs = vecs[(vecs[:, 0] > 0) | ((vecs[:, 0] == 0) & (vecs[:, 1] > 0))]  # one of +-v
    lengths = np.hypot(vecs[:, 0], vecs[:, 1])
    a0 = np.median(vecs[np.abs(lengths - lengths.min()) < 0.15 * lengths.min()], axis=0)
    unit = a0 / np.hypot(a0[0], a0[1])
    ang = np.abs(vecs[:, 0] * unit[1] - vecs[:, 1] * unit[0]) / lengths  # |sin| to a0
    other = vecs[ang > math.sin(math.radians(30))]
    ol = np.hypot(other[:, 0], other[:, 1])
    b0 = np.median(other[np.abs(ol - ol.min()) < 0.15 * ol.min()], axis=0)
    basis = np.array([a0, b0]).T
    idx = np.rint(np.linalg.solve(basis, (bright - bright[0]).T).T)
    design = np.column_stack([np.ones(len(bright)), idx])
    coef, *_ = np.linalg.lstsq(design, bright, rcond=None)
    return {"a": [float(coef[1, 0]), float(coef[1, 1])],
            "b": [float(coef[2, 0]), float(coef[2, 1])]}
