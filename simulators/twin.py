"""Digital twin of a microscope over a large sample: the yardstick for *discovery*.

The sample is a square [001] ABO3 perovskite film, ``fovs x fovs`` fields of view of
``fov_px`` pixels at the base magnification, with its ground truth in **sample coordinates**
(metres, x = right, y = down; the stage coordinates the frames' ``origin_m`` refer to):

* polarization domains: convex polygons (axis-aligned rectangles: {100} walls; diamonds and
  45-degree lamellae: {110} walls) of variant 1 embedded in a single-domain matrix of variant 0;
  the polygon outlines are the walls (``Twin.walls_m``, closed polylines);
* amorphous patches: irregular blobs (``Twin.amorphous_contains``), columns jittered, dimmed
  and broadened exactly as in :mod:`rewardscope.simulators.perovskite`;
* defect clusters: vacancies (missing columns) and displaced columns (``Twin.defects_m``);
* everything else is single-domain crystal that should attract nothing.

The physics is the one of :class:`~rewardscope.simulators.perovskite.PerovskiteSimulator`
(same peak ratios, column widths, B displacement, amorphous disorder hashed per site): the
sample's column list is generated once and every frame renders the visible part of it, so the
same column sits at the same sample position in every frame, at any magnification or rotation.

Scan model: :meth:`Twin.scan` sets the field of view (centre, side, scan rotation), clipped to
the sample; :meth:`Twin.frame` acquires a ``fov_px x fov_px`` frame whose header fields follow
docs/PROTOCOL.md: pixel ``(x, y)`` -> sample ``origin_m + R(rotation) @ ([x, y] * pixel_size_m)``,
pixel centres at integers, the frame covering ``[-0.5, fov_px - 0.5)`` in both axes.

Discovery: a frame counts as **high magnification** when its pixel size is at most
``base_pixel_size_m / high_mag`` (``high_mag = 2`` by default: zoomed at least x2). The twin
keeps, for every wall sample point (one per ``truth_step_m`` of wall length), every amorphous
grid point (one per ``truth_step_m``-square cell inside a blob) and every defect, whether some
high-magnification frame has imaged it (the point lies inside the frame). :meth:`Twin.discovery`
returns the imaged fractions (of wall length, amorphous area, defects); they never decrease and
reach 1 once everything has been imaged at high magnification.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from rewardscope.simulators.perovskite import (
    _VARIANTS_LATTICE,
    AMORPHOUS_BROADEN,
    AMORPHOUS_DIM,
    AMORPHOUS_JITTER_FRAC,
    U2_FULL_SCALE,
    _Blob,
    _clip_line,
    _render_gaussians,
    _site_normals,
)

DISCOVERY_KINDS = ("wall", "amorphous", "defect")


@dataclass
class TwinConfig:
    """The virtual sample and the detector; lengths in pixels are at the base magnification."""

    fovs: int = 8  # the sample is fovs x fovs base fields of view
    fov_px: int = 384  # frame side, pixels (every frame, any magnification)
    lattice_px: float = 12.0  # A-A spacing at the base magnification, pixels
    lattice_m: float = 3.905e-10  # physical a (SrTiO3-like)
    a_peak: float = 1.0
    b_peak: float = 0.45
    column_sigma_frac: float = 0.11  # column width, fraction of a
    displacement_frac: float = 0.08  # B displacement along the polarization, fraction of a
    domains: int = 5  # convex domains of variant 1 in the variant-0 matrix
    amorphous_regions: int = 3
    amorphous_radius_frac: float = 0.22  # blob radius, fraction of the base fov
    defect_clusters: int = 1
    defects_per_cluster: int = 24  # half vacancies, half displaced columns
    defect_radius_frac: float = 0.12  # cluster radius, fraction of the base fov
    defect_shift_frac: float = 0.3  # displaced columns move by this fraction of a
    background: float = 0.05
    noise_sigma: float = 0.05  # additive Gaussian noise, units of a_peak
    dose: float | None = None  # electrons per pixel at the A peak; None = no shot noise
    high_mag: float = 2.0  # zoom factor from which imaging counts as discovery
    min_fov_frac: float = 0.125  # smallest field of view, fraction of the base fov
    truth_step_frac: float = 1.0  # truth sampling step, fraction of a
    lattice_hint: bool = True  # send lattice_px (known material, known pixel size)
    seed: int = 0


@dataclass
class FrameTruth:
    """Ground truth of one frame in its own pixel coordinates (x = column, y = row)."""

    walls: list[tuple[float, float, float, float]]  # wall segments clipped to the frame
    amorphous_mask: np.ndarray  # (H, W) bool, blob outlines at pixel centres
    defects: np.ndarray  # (D, 2) defect positions inside the frame
    atoms: np.ndarray  # (N, 2) columns inside the frame
    domain: np.ndarray  # (N,) int16 variant of each column


@dataclass
class TwinFrame:
    """One acquired frame with the header fields of docs/PROTOCOL.md and its truth."""

    pixels: np.ndarray  # (H, W) uint16 counts
    index: int
    pixel_size_m: float
    origin_m: tuple[float, float]  # sample position of pixel (0, 0)
    rotation_rad: float  # scan rotation
    lattice_px: float  # lattice spacing in this frame, pixels
    magnification: float  # base fov / this fov
    high_mag: bool  # counts for discovery
    truth: FrameTruth
    meta: dict = field(default_factory=dict)


class Twin:
    """A virtual sample under a virtual scan: ``scan`` moves/zooms, ``frame`` acquires.

    Parameters
    ----------
    config : TwinConfig, optional
        The sample and detector; keyword ``overrides`` replace its fields.
    """

    def __init__(self, config: TwinConfig | None = None, **overrides) -> None:
        cfg = config or TwinConfig()
        if overrides:
            cfg = TwinConfig(**{**cfg.__dict__, **overrides})
        _validate(cfg)
        self.config = cfg
        self.base_pixel_size_m = cfg.lattice_m / cfg.lattice_px
        self.base_fov_m = cfg.fov_px * self.base_pixel_size_m
        self.side_m = cfg.fovs * self.base_fov_m
        self.truth_step_m = cfg.truth_step_frac * cfg.lattice_m
        rng = np.random.default_rng([cfg.seed, 0x7A1])
        self._place_features(rng)
        self._build_columns(rng)
        self._build_truth_points()
        self.frames_taken = 0
        self.center_m = (0.5 * self.base_fov_m, 0.5 * self.base_fov_m)
        self.fov_m = self.base_fov_m
        self.rotation_rad = 0.0
        self.history: list[dict] = []  # one entry per frame: position and discovery after it

    # ------------------------------------------------------------------ sample layout
    def _place_features(self, rng: np.random.Generator) -> None:
        """Each feature gets its own base field of view (cell), drawn without replacement;
        the cells left over are single-domain crystal."""
        cfg = self.config
        need = cfg.domains + cfg.amorphous_regions + cfg.defect_clusters
        cells = rng.permutation(cfg.fovs * cfg.fovs)[:need]
        f = self.base_fov_m
        centres = [((c % cfg.fovs + 0.5) * f, (c // cfg.fovs + 0.5) * f) for c in cells]
        self.domains_m: list[np.ndarray] = []  # convex polygons, counter-clockwise (y down)
        kinds = ("rect", "diamond", "lamella")
        for i in range(cfg.domains):
            cx, cy = centres[i]
            kind = kinds[i % len(kinds)]
            if kind == "rect":
                w, h = rng.uniform(0.35, 0.6, 2) * f
                poly = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
            elif kind == "diamond":
                r = rng.uniform(0.25, 0.34) * f
                poly = np.array([[0, -r], [r, 0], [0, r], [-r, 0]])
            else:  # a thin band along a <110> direction
                length, width = rng.uniform(0.55, 0.65) * f, rng.uniform(0.12, 0.2) * f
                poly = np.array([[-length, -width], [length, -width], [length, width],
                                 [-length, width]]) / 2
                c = s = math.sqrt(0.5) * (1 if rng.integers(2) else -1)
                c = abs(c)
                poly = poly @ np.array([[c, s], [-s, c]])
            poly = poly + [cx, cy]
            if _signed_area(poly) < 0:
                poly = poly[::-1]
            self.domains_m.append(poly)
        self.walls_m: list[np.ndarray] = [np.vstack([p, p[:1]]) for p in self.domains_m]
        self.blobs: list[_Blob] = []
        for i in range(cfg.amorphous_regions):
            cx, cy = centres[cfg.domains + i]
            self.blobs.append(_Blob(float(cx), float(cy), cfg.amorphous_radius_frac * f,
                                    tuple(float(x) for x in rng.uniform(0.0, 0.1, 3)),
                                    tuple(float(x) for x in rng.uniform(0.0, 2 * math.pi, 3))))
        self.defect_centres_m = [centres[cfg.domains + cfg.amorphous_regions + i]
                                 for i in range(cfg.defect_clusters)]

    def _build_columns(self, rng: np.random.Generator) -> None:
        """Every column of the sample once: position (m), peak, width (m), variant."""
        cfg = self.config
        a = cfg.lattice_m
        n = int(math.ceil(self.side_m / a)) + 1
        origin = rng.uniform(0.0, a, 2)
        gu, gv = (g.ravel().astype(float) for g in np.meshgrid(np.arange(n), np.arange(n)))
        lu = np.concatenate([gu, gu + 0.5])
        lv = np.concatenate([gv, gv + 0.5])
        site = np.concatenate([np.zeros(gu.size, np.int8), np.ones(gu.size, np.int8)])
        pos = origin + a * np.stack([lu, lv], axis=1)
        keep = (pos < self.side_m).all(axis=1)
        lu, lv, site, pos = lu[keep], lv[keep], site[keep], pos[keep]
        domain = np.zeros(pos.shape[0], np.int16)
        for poly in self.domains_m:
            domain[_in_convex(poly, pos)] = 1
        pol = _VARIANTS_LATTICE[:2]  # lattice axes = sample axes (no lattice rotation)
        is_b = site == 1
        pos[is_b] += cfg.displacement_frac * a * pol[domain[is_b]]
        peak = np.where(is_b, cfg.b_peak, cfg.a_peak).astype(float)
        sigma = np.full(pos.shape[0], cfg.column_sigma_frac * a)
        disordered = self.amorphous_contains(pos)
        if disordered.any():
            jit = _site_normals(lu[disordered], lv[disordered], cfg.seed)
            pos[disordered] += AMORPHOUS_JITTER_FRAC * a * jit
            peak[disordered] *= AMORPHOUS_DIM
            sigma[disordered] *= AMORPHOUS_BROADEN
        keep = np.ones(pos.shape[0], bool)
        defects = []
        radius = cfg.defect_radius_frac * self.base_fov_m
        for cx, cy in self.defect_centres_m:
            near = np.flatnonzero(np.hypot(pos[:, 0] - cx, pos[:, 1] - cy) < radius)
            pick = rng.choice(near, size=min(cfg.defects_per_cluster, near.size), replace=False)
            half = pick.size // 2
            defects.append(pos[pick].copy())
            keep[pick[:half]] = False  # vacancies
            ang = rng.uniform(0.0, 2 * math.pi, pick.size - half)
            pos[pick[half:]] += cfg.defect_shift_frac * a * np.stack([np.cos(ang),
                                                                       np.sin(ang)], axis=1)
        self.defects_m = np.vstack(defects) if defects else np.zeros((0, 2))
        self.polarization = pol.copy()
        self._pos, self._peak, self._sigma = pos[keep], peak[keep], sigma[keep]
        self._domain = domain[keep]

    def _build_truth_points(self) -> None:
        """Discovery targets: wall points (weights = length), amorphous cells, defects."""
        step = self.truth_step_m
        pts, wts = [], []
        for line in self.walls_m:
            for p, q in zip(line[:-1], line[1:], strict=True):
                seg = float(np.hypot(*(q - p)))
                k = max(1, int(math.ceil(seg / step)))
                t = (np.arange(k) + 0.5) / k
                pts.append(p + t[:, None] * (q - p))
                wts.append(np.full(k, seg / k))
        self.wall_points_m = np.vstack(pts) if pts else np.zeros((0, 2))
        self.wall_weights_m = np.concatenate(wts) if wts else np.zeros(0)
        n = int(self.side_m // step)
        g = (np.arange(n) + 0.5) * step
        gx, gy = np.meshgrid(g, g)
        grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
        self.amorphous_points_m = grid[self.amorphous_contains(grid)]
        self.amorphous_cell_m2 = step * step
        self._seen = {"wall": np.zeros(len(self.wall_points_m), bool),
                      "amorphous": np.zeros(len(self.amorphous_points_m), bool),
                      "defect": np.zeros(len(self.defects_m), bool)}

    # ------------------------------------------------------------------ truth queries
    def amorphous_contains(self, points_m: np.ndarray) -> np.ndarray:
        """Whether sample points (N, 2) m lie in an amorphous patch; (N,) bool."""
        p = np.asarray(points_m, float).reshape(-1, 2)
        inside = np.zeros(p.shape[0], bool)
        for b in self.blobs:
            inside |= b.contains(p[:, 0], p[:, 1])
        return inside

    @property
    def wall_length_m(self) -> float:
        """Total wall length of the sample, metres."""
        return float(sum(np.hypot(*np.diff(w, axis=0).T).sum() for w in self.walls_m))

    @property
    def amorphous_area_m2(self) -> float:
        """Total amorphous area (grid estimate at ``truth_step_m``), square metres."""
        return len(self.amorphous_points_m) * self.amorphous_cell_m2

    # ------------------------------------------------------------------ coordinates
    @property
    def pixel_size_m(self) -> float:
        """Pixel size of the current field of view, metres."""
        return self.fov_m / self.config.fov_px

    @property
    def magnification(self) -> float:
        """Base field of view / current field of view (1 = base magnification)."""
        return self.base_fov_m / self.fov_m

    @property
    def origin_m(self) -> tuple[float, float]:
        """Sample position of pixel (0, 0) of the current field of view, metres."""
        half = 0.5 * (self.config.fov_px - 1) * self.pixel_size_m
        off = _rot(self.rotation_rad) @ np.array([half, half])
        return (float(self.center_m[0] - off[0]), float(self.center_m[1] - off[1]))

    def pixel_to_sample(self, xy_px: np.ndarray) -> np.ndarray:
        """Frame pixels (N, 2) (x = column) of the current view -> sample metres (N, 2)."""
        xy = np.asarray(xy_px, float).reshape(-1, 2)
        return np.asarray(self.origin_m) + (xy * self.pixel_size_m) @ _rot(self.rotation_rad).T

    def sample_to_pixel(self, xy_m: np.ndarray) -> np.ndarray:
        """Sample metres (N, 2) -> frame pixels (N, 2) of the current view (inverse of
        :meth:`pixel_to_sample`)."""
        xy = np.asarray(xy_m, float).reshape(-1, 2) - np.asarray(self.origin_m)
        return (xy @ _rot(self.rotation_rad)) / self.pixel_size_m

    # ------------------------------------------------------------------ scan model
    def scan(self, center_m, fov_m: float | None = None, rotation_rad: float = 0.0) -> dict:
        """Move/zoom the field of view, clipped to the sample.

        Parameters
        ----------
        center_m : (2,) sequence of float
            Requested centre of the field of view, sample metres.
        fov_m : float, optional
            Side of the square field of view, metres (default: the base field of view);
            clipped to [``min_fov_frac`` x base fov, the largest square that fits rotated].
        rotation_rad : float
            Scan rotation, radians.

        Returns
        -------
        dict
            The view actually set: ``center_m``, ``fov_m``, ``rotation_rad``, ``magnification``.
        """
        cx, cy = (float(v) for v in center_m)
        rot = float(rotation_rad)
        if not all(math.isfinite(v) for v in (cx, cy, rot)):
            raise ValueError(f"scan needs finite numbers, got {center_m!r}, {rotation_rad!r}")
        fov = self.base_fov_m if fov_m is None else float(fov_m)
        if not (math.isfinite(fov) and fov > 0):
            raise ValueError(f"fov_m must be a positive number, got {fov_m!r}")
        spread = abs(math.cos(rot)) + abs(math.sin(rot))  # bounding-box side / fov
        fov = min(max(fov, self.config.min_fov_frac * self.base_fov_m), self.side_m / spread)
        half = 0.5 * fov * spread
        self.center_m = (min(max(cx, half), self.side_m - half),
                         min(max(cy, half), self.side_m - half))
        self.fov_m, self.rotation_rad = fov, rot
        return {"center_m": list(self.center_m), "fov_m": fov, "rotation_rad": rot,
                "magnification": self.magnification}

    def frame(self) -> TwinFrame:
        """Acquire the current field of view and book what it discovered.

        Returns
        -------
        TwinFrame
            ``fov_px x fov_px`` uint16 counts, header fields and the frame's truth.
        """
        cfg = self.config
        n = cfg.fov_px
        ps = self.pixel_size_m
        xy = self.sample_to_pixel(self._pos)
        sig = self._sigma / ps
        margin = 5.0 * float(sig.max()) + 1.0
        sel = ((xy[:, 0] > -margin) & (xy[:, 0] < n + margin)
               & (xy[:, 1] > -margin) & (xy[:, 1] < n + margin))
        img = _render_gaussians((n, n), xy[sel, 0], xy[sel, 1], self._peak[sel], sig[sel])
        img = img + cfg.background
        rng = np.random.default_rng([cfg.seed, self.frames_taken, 0xF4A3])
        if cfg.dose is not None:
            img = rng.poisson(np.clip(img, 0, None) * cfg.dose) / cfg.dose
        if cfg.noise_sigma > 0:
            img = img + rng.normal(0.0, cfg.noise_sigma * cfg.a_peak, img.shape)
        scale = cfg.dose if cfg.dose is not None else U2_FULL_SCALE / cfg.a_peak
        pixels = np.clip(np.rint(np.clip(img, 0, None) * scale), 0, 65535).astype("<u2")
        inside_cols = _inside(xy, n)
        truth = FrameTruth(walls=self._walls_px(), amorphous_mask=self._mask_px(),
                           defects=self._inside_px(self.defects_m), atoms=xy[inside_cols],
                           domain=self._domain[inside_cols])
        high = ps <= self.base_pixel_size_m / cfg.high_mag * (1 + 1e-9)
        if high:
            for kind, pts in (("wall", self.wall_points_m),
                              ("amorphous", self.amorphous_points_m),
                              ("defect", self.defects_m)):
                if len(pts):
                    self._seen[kind] |= _inside(self.sample_to_pixel(pts), n)
        out = TwinFrame(pixels=pixels, index=self.frames_taken, pixel_size_m=ps,
                        origin_m=self.origin_m, rotation_rad=self.rotation_rad,
                        lattice_px=cfg.lattice_m / ps, magnification=self.magnification,
                        high_mag=bool(high), truth=truth,
                        meta={"scan_rotation_rad": self.rotation_rad,
                              "magnification": self.magnification})
        self.frames_taken += 1
        self.history.append({"center_m": list(self.center_m), "fov_m": self.fov_m,
                             "rotation_rad": self.rotation_rad, "high_mag": bool(high),
                             **self.discovery()})
        return out

    def discovery(self) -> dict[str, float]:
        """Fractions imaged at high magnification so far.

        Returns
        -------
        dict
            ``wall_fraction`` (of the wall length), ``amorphous_fraction`` (of the amorphous
            area), ``defect_fraction`` (of the defects), each in [0, 1]; 1 when the sample has
            none of that kind.
        """
        w = self.wall_weights_m
        wall = float(w[self._seen["wall"]].sum() / w.sum()) if w.size else 1.0
        am = self._seen["amorphous"]
        de = self._seen["defect"]
        return {"wall_fraction": wall,
                "amorphous_fraction": float(am.mean()) if am.size else 1.0,
                "defect_fraction": float(de.mean()) if de.size else 1.0}

    def publish(self, instrument, frame: TwinFrame, *, seq: int | None = None) -> int:
        """Send ``frame`` through an :class:`~rewardscope.clients.InstrumentClient` (its
        session must be started) with pixel size, origin, scan rotation and, when
        ``lattice_hint``, the lattice spacing in pixels; returns the seq used."""
        return instrument.send_frame(
            frame.pixels, seq=seq, pixel_size_m=frame.pixel_size_m, origin_m=frame.origin_m,
            lattice_px=frame.lattice_px if self.config.lattice_hint else None,
            t=float(frame.index), meta=dict(frame.meta))

    # ------------------------------------------------------------------ per-frame truth
    def _inside_px(self, pts_m: np.ndarray) -> np.ndarray:
        if not len(pts_m):
            return np.zeros((0, 2))
        xy = self.sample_to_pixel(pts_m)
        return xy[_inside(xy, self.config.fov_px)]

    def _walls_px(self) -> list[tuple[float, float, float, float]]:
        n = self.config.fov_px
        out = []
        for line in self.walls_m:
            xy = self.sample_to_pixel(line)
            for p, q in zip(xy[:-1], xy[1:], strict=True):
                seg = _clip_segment(p, q, -0.5, n - 0.5)
                if seg is not None:
                    out.append(seg)
        return out

    def _mask_px(self) -> np.ndarray:
        n = self.config.fov_px
        if not self.blobs:
            return np.zeros((n, n), bool)
        yy, xx = np.mgrid[0:n, 0:n]
        pts = self.pixel_to_sample(np.stack([xx.ravel(), yy.ravel()], axis=1))
        return self.amorphous_contains(pts).reshape(n, n)


# ---------------------------------------------------------------------- helpers

def _validate(cfg: TwinConfig) -> None:
    if cfg.fovs < 1 or cfg.fov_px < 16:
        raise ValueError(f"need fovs >= 1 and fov_px >= 16, got {cfg.fovs}, {cfg.fov_px}")
    if not cfg.lattice_px >= 2.0:
        raise ValueError(f"lattice_px must be >= 2, got {cfg.lattice_px}")
    need = cfg.domains + cfg.amorphous_regions + cfg.defect_clusters
    if min(cfg.domains, cfg.amorphous_regions, cfg.defect_clusters) < 0 or need > cfg.fovs ** 2:
        raise ValueError(f"{need} features do not fit in {cfg.fovs}x{cfg.fovs} fields of view")
    if not cfg.high_mag > 1.0 or not 0 < cfg.min_fov_frac <= 1.0 / cfg.high_mag:
        raise ValueError("need high_mag > 1 and 0 < min_fov_frac <= 1 / high_mag")
    if cfg.dose is not None and not cfg.dose > 0:
        raise ValueError(f"dose must be positive or None, got {cfg.dose}")


def _rot(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def _inside(xy: np.ndarray, n: int) -> np.ndarray:
    return ((xy[:, 0] >= -0.5) & (xy[:, 0] < n - 0.5)
            & (xy[:, 1] >= -0.5) & (xy[:, 1] < n - 0.5))


def _signed_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _in_convex(poly: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Points (N, 2) inside a convex polygon with positive signed area."""
    inside = np.ones(pts.shape[0], bool)
    for p, q in zip(poly, np.roll(poly, -1, axis=0), strict=True):
        e = q - p
        inside &= e[0] * (pts[:, 1] - p[1]) - e[1] * (pts[:, 0] - p[0]) >= 0
    return inside


def _clip_segment(p: np.ndarray, q: np.ndarray, lo: float, hi: float
                  ) -> tuple[float, float, float, float] | None:
    """The part of segment p-q inside the square [lo, hi)^2, or None (Liang-Barsky)."""
    return _clip_line(p, q - p, lo, lo, hi, hi, t_range=(0.0, 1.0))
