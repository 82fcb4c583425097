"""Stand-in microscope: HAADF-STEM frames of a [001] ABO3 perovskite film, with exact truth.

Why: the service is judged against ground truth (column positions, sublattice, polarization
domains, walls, amorphous regions), so every frame is rendered from an explicit atomic model
that is returned with it. Coordinates: x = column, y = row, pixels, pixel centres at integers;
the frame covers [-0.5, W - 0.5) x [-0.5, H - 0.5).

The sample is fixed in "sample coordinates" (= pixel coordinates of frame 0); frame ``i`` sees
it shifted by ``i * drift_px_per_frame`` (dx, dy). Walls, blobs and the per-column disorder are
properties of the sample, so the same columns move rigidly from frame to frame; only the
detector noise and scan jitter change with the frame index.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

WALL_DIRECTIONS = ("100", "110", "random")
WIRE_DTYPES = ("<u2", "<f4")
MIN_STRIPE_CELLS = 5.0  # narrowest stripe domain, in lattice spacings
AMORPHOUS_JITTER_FRAC = 0.25  # column jitter in amorphous regions, fraction of a
AMORPHOUS_DIM = 0.6  # peak intensity factor in amorphous regions
AMORPHOUS_BROADEN = 1.5  # column width factor in amorphous regions
U2_FULL_SCALE = 1000.0  # counts of the A peak for "<u2" frames without a dose
# Polarization variants in lattice coordinates: [110], [-1-10] (180 deg pair), then [-110],
# [1-10]. Consecutive ids differ, so alternating variants across walls always changes label.
_VARIANTS_LATTICE = np.array([[1, 1], [-1, -1], [-1, 1], [1, -1]], float) / math.sqrt(2.0)


@dataclass
class SimConfig:
    """Everything that defines a simulated acquisition; see the module docstring for axes."""

    shape: tuple[int, int] = (384, 384)
    lattice_px: float = 12.0  # A-A spacing (pseudocubic a) in pixels
    rotation_deg: float = 0.0  # lattice rotation
    a_peak: float = 1.0  # A-column peak intensity (Z-contrast bright)
    b_peak: float = 0.45  # B-column peak (dimmer)
    column_sigma_frac: float = 0.11  # Gaussian column width as fraction of lattice_px
    displacement_frac: float = 0.08  # B displacement along the local polarization, fraction of a
    n_walls: int = 2  # straight domain walls (stripe domains); 0 = single domain
    wall_direction: str = "100"  # "100" (along a lattice vector), "110" (diagonal) or "random"
    n_variants: int = 2  # polarization variants alternating across walls (up to 4)
    amorphous_regions: int = 0  # number of amorphous blobs
    amorphous_radius_frac: float = 0.12  # blob radius as fraction of min(shape)
    gradient: float = 0.0  # mistilt-like linear intensity gradient (fraction across frame)
    scan_noise_px: float = 0.0  # per-scan-line horizontal jitter (std, px)
    drift_px_per_frame: tuple[float, float] = (0.0, 0.0)  # (dx, dy) per frame index
    dose: float | None = None  # electrons per pixel at the A-peak; None = no Poisson noise
    read_noise: float = 0.0  # Gaussian read noise std, in units of a_peak
    noise_sigma: float = 0.0  # extra additive Gaussian noise std in units of a_peak
    background: float = 0.05
    dtype: str = "<u2"  # wire dtype: "<u2" (scaled counts) or "<f4"
    seed: int = 0
    frame_time_s: float = 1.0  # simulated time between frames: SimFrame.t = index * this
    lattice_m: float = 3.905e-10  # physical a (SrTiO3-like), for pixel_size_m


@dataclass
class Truth:
    """Ground truth of one frame, in that frame's pixel coordinates (drift included)."""

    atoms: np.ndarray  # (N, 2) float64, x = column, y = row; only columns inside the frame
    site: np.ndarray  # (N,) int8: 0 = A column, 1 = B column
    domain: np.ndarray  # (N,) int16: polarization variant id of the atom's domain
    amorphous: np.ndarray  # (N,) bool: amorphous_mask at the atom's (rounded) position
    walls: list[tuple[float, float, float, float]]  # x0, y0, x1, y1 clipped to the frame
    amorphous_mask: np.ndarray  # (H, W) bool
    lattice_px: float
    rotation_deg: float
    polarization: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # (V, 2) x, y


@dataclass
class SimFrame:
    pixels: np.ndarray  # (H, W) in cfg.dtype
    truth: Truth
    index: int
    t: float  # simulated acquisition time


@dataclass(frozen=True)
class _Blob:
    cx: float
    cy: float
    radius: float
    amps: tuple[float, ...]  # harmonic amplitudes k = 2, 3, 4 (irregular outline)
    phases: tuple[float, ...]

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        dx, dy = x - self.cx, y - self.cy
        phi = np.arctan2(dy, dx)
        r = np.ones_like(phi)
        for k, (amp, ph) in enumerate(zip(self.amps, self.phases, strict=True), start=2):
            r += amp * np.cos(k * phi + ph)
        return dx * dx + dy * dy < (self.radius * r) ** 2

    @property
    def reach(self) -> float:
        return self.radius * (1.0 + sum(self.amps))


class PerovskiteSimulator:
    """Renders frames of one fixed sample; ``frame(i)`` is a pure function of (config, i)."""

    def __init__(self, config: SimConfig | None = None, **overrides) -> None:
        cfg = dataclasses.replace(config or SimConfig(), **overrides)
        cfg.shape = (int(cfg.shape[0]), int(cfg.shape[1]))
        cfg.drift_px_per_frame = (float(cfg.drift_px_per_frame[0]),
                                  float(cfg.drift_px_per_frame[1]))
        _validate(cfg)
        self.config = cfg
        a = cfg.lattice_px
        th = math.radians(cfg.rotation_deg)
        self._e1 = np.array([math.cos(th), math.sin(th)])
        self._e2 = np.array([-math.sin(th), math.cos(th)])
        rng = np.random.default_rng([cfg.seed, 0x5A4D])  # sample structure, frame-independent
        self._origin = rng.uniform(0.0, a, 2)
        direction = cfg.wall_direction
        if direction == "random":
            direction = ("100", "110")[int(rng.integers(2))]
        self.wall_direction = direction
        flip = int(rng.integers(2))
        if direction == "100":  # stripe coordinate s = u or v; A rows at integer s, B at +0.5
            self._s_coef = np.array([1.0, 0.0]) if flip else np.array([0.0, 1.0])
            self._wall_phase = 0.25
            s_px = a
        else:  # s = u + v or u - v; A and B both on integer s
            self._s_coef = np.array([1.0, 1.0]) if flip else np.array([1.0, -1.0])
            self._wall_phase = 0.5
            s_px = a / math.sqrt(2.0)
        self._walls_s = self._place_walls(rng, s_px)
        pol = _VARIANTS_LATTICE[: cfg.n_variants]
        self.polarization = pol[:, :1] * self._e1 + pol[:, 1:] * self._e2
        self._blobs = self._place_blobs(rng)
        self._grad_angle = float(rng.uniform(0.0, 2.0 * math.pi))

    # ------------------------------------------------------------------ structure
    def _lattice_coords(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = self.config.lattice_px
        dx, dy = x - self._origin[0], y - self._origin[1]
        return (dx * self._e1[0] + dy * self._e1[1]) / a, (dx * self._e2[0] + dy * self._e2[1]) / a

    def _frame_corners(self) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.config.shape
        return np.array([-0.5, w - 0.5, w - 0.5, -0.5]), np.array([-0.5, -0.5, h - 0.5, h - 0.5])

    def _place_walls(self, rng: np.random.Generator, s_px: float) -> np.ndarray:
        """Wall offsets along s, spread over frame 0, never through a column row."""
        cfg = self.config
        if cfg.n_walls <= 0 or cfg.n_variants < 2:
            return np.zeros(0)
        u, v = self._lattice_coords(*self._frame_corners())
        s = self._s_coef[0] * u + self._s_coef[1] * v
        lo, hi = float(s.min()), float(s.max())
        min_w = MIN_STRIPE_CELLS * cfg.lattice_px / s_px
        # Fewer walls than asked when the field is too small: stripes stay >= min_w wide even
        # after snapping each wall to the nearest position between column rows (+-0.5).
        n = min(cfg.n_walls, max(0, int((hi - lo) // (min_w + 1.0)) - 1))
        if n == 0:
            return np.zeros(0)
        step = (hi - lo) / (n + 1)
        ph = self._wall_phase
        base = np.round(lo + step * np.arange(1, n + 1) - ph) + ph
        pos = np.round(base + rng.uniform(-0.15, 0.15, n) * step - ph) + ph
        if np.diff(np.concatenate([[lo], pos, [hi]])).min() < min_w:
            pos = base
        return pos

    def _place_blobs(self, rng: np.random.Generator) -> list[_Blob]:
        cfg = self.config
        h, w = cfg.shape
        radius = cfg.amorphous_radius_frac * min(h, w)
        blobs = []
        for _ in range(cfg.amorphous_regions):
            m = 0.5 * radius
            cx = rng.uniform(min(m, w / 2), max(w - m, w / 2))
            cy = rng.uniform(min(m, h / 2), max(h - m, h / 2))
            blobs.append(_Blob(float(cx), float(cy), float(radius),
                               tuple(float(x) for x in rng.uniform(0.0, 0.1, 3)),
                               tuple(float(x) for x in rng.uniform(0.0, 2 * math.pi, 3))))
        return blobs

    def _in_blobs(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        inside = np.zeros(np.shape(x), bool)
        for b in self._blobs:
            inside |= b.contains(x, y)
        return inside

    def _stripe_variant(self, lu: np.ndarray, lv: np.ndarray) -> np.ndarray:
        s = self._s_coef[0] * lu + self._s_coef[1] * lv
        stripe = (s[:, None] > self._walls_s[None, :]).sum(axis=1)
        return (stripe % self.config.n_variants).astype(np.int16)

    def _mask(self, shift: np.ndarray) -> np.ndarray:
        """Amorphous mask of a frame: blob outlines evaluated at pixel centres."""
        h, w = self.config.shape
        mask = np.zeros((h, w), bool)
        for b in self._blobs:
            cx, cy, r = b.cx + shift[0], b.cy + shift[1], b.reach
            x0, x1 = max(0, int(cx - r) - 1), min(w, int(cx + r) + 2)
            y0, y1 = max(0, int(cy - r) - 1), min(h, int(cy + r) + 2)
            if x0 >= x1 or y0 >= y1:
                continue
            yy, xx = np.mgrid[y0:y1, x0:x1]
            mask[y0:y1, x0:x1] |= b.contains(xx - shift[0], yy - shift[1])
        return mask

    def _walls_px(self, shift: np.ndarray) -> list[tuple[float, float, float, float]]:
        a = self.config.lattice_px
        h, w = self.config.shape
        cu, cv = self._s_coef
        norm2 = cu * cu + cv * cv
        d = a * (-cv * self._e1 + cu * self._e2)
        out = []
        for c in self._walls_s:
            u0, v0 = c * cu / norm2, c * cv / norm2
            p0 = self._origin + shift + a * (u0 * self._e1 + v0 * self._e2)
            seg = _clip_line(p0, d, -0.5, -0.5, w - 0.5, h - 0.5)
            if seg is not None:
                out.append(seg)
        return out

    # ------------------------------------------------------------------ rendering
    @property
    def expected_sites_per_px2(self) -> float:
        """Columns per pixel^2: one A and one B per unit cell of a^2."""
        return 2.0 / self.config.lattice_px ** 2

    @property
    def pixel_size_m(self) -> float:
        return self.config.lattice_m / self.config.lattice_px

    def frame(self, index: int = 0) -> SimFrame:
        """Render frame ``index``: deterministic in (seed, index); drift = index * drift."""
        cfg = self.config
        h, w = cfg.shape
        a = cfg.lattice_px
        shift = index * np.asarray(cfg.drift_px_per_frame)
        sigma = cfg.column_sigma_frac * a
        margin = 5.0 * sigma * AMORPHOUS_BROADEN + AMORPHOUS_JITTER_FRAC * a * 5.0 + a
        # Lattice sites covering the frame plus a margin, in sample coordinates.
        cx, cy = self._frame_corners()
        cx = cx + np.array([-margin, margin, margin, -margin]) - shift[0]
        cy = cy + np.array([-margin, -margin, margin, margin]) - shift[1]
        u, v = self._lattice_coords(cx, cy)
        us = np.arange(math.floor(u.min()) - 1, math.ceil(u.max()) + 2)
        vs = np.arange(math.floor(v.min()) - 1, math.ceil(v.max()) + 2)
        gu, gv = (g.ravel().astype(float) for g in np.meshgrid(us, vs))
        lu = np.concatenate([gu, gu + 0.5])
        lv = np.concatenate([gv, gv + 0.5])
        site = np.concatenate([np.zeros(gu.size, np.int8), np.ones(gu.size, np.int8)])
        pos = self._origin + a * (lu[:, None] * self._e1 + lv[:, None] * self._e2)
        keep = ((pos[:, 0] > cx.min()) & (pos[:, 0] < cx.max())
                & (pos[:, 1] > cy.min()) & (pos[:, 1] < cy.max()))
        lu, lv, site, pos = lu[keep], lv[keep], site[keep], pos[keep]
        domain = self._stripe_variant(lu, lv)
        is_b = site == 1
        pos[is_b] += cfg.displacement_frac * a * self.polarization[domain[is_b]]
        peak = np.where(is_b, cfg.b_peak, cfg.a_peak).astype(float)
        sig = np.full(site.size, sigma)
        disordered = self._in_blobs(pos[:, 0], pos[:, 1])
        if disordered.any():
            jit = _site_normals(lu[disordered], lv[disordered], cfg.seed)
            pos[disordered] += AMORPHOUS_JITTER_FRAC * a * jit
            peak[disordered] *= AMORPHOUS_DIM
            sig[disordered] *= AMORPHOUS_BROADEN
        pos = pos + shift
        img = _render_gaussians((h, w), pos[:, 0], pos[:, 1], peak, sig) + cfg.background
        rng = np.random.default_rng([cfg.seed, int(index), 0xF4A3])
        img = self._degrade(img, rng)
        pixels = _to_wire(img, cfg)
        inside = ((pos[:, 0] >= -0.5) & (pos[:, 0] < w - 0.5)
                  & (pos[:, 1] >= -0.5) & (pos[:, 1] < h - 0.5))
        atoms = pos[inside]
        mask = self._mask(shift)
        ix = np.clip(np.floor(atoms[:, 0] + 0.5).astype(int), 0, w - 1)
        iy = np.clip(np.floor(atoms[:, 1] + 0.5).astype(int), 0, h - 1)
        truth = Truth(atoms=atoms, site=site[inside], domain=domain[inside],
                      amorphous=mask[iy, ix], walls=self._walls_px(shift), amorphous_mask=mask,
                      lattice_px=a, rotation_deg=cfg.rotation_deg,
                      polarization=self.polarization.copy())
        return SimFrame(pixels=pixels, truth=truth, index=int(index),
                        t=float(index) * cfg.frame_time_s)

    def frames(self, n: int) -> Iterator[SimFrame]:
        for i in range(n):
            yield self.frame(i)

    def _degrade(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Instrument effects, in acquisition order: mistilt, scan jitter, shot and read noise."""
        cfg = self.config
        h, w = img.shape
        if cfg.gradient:
            c, s = math.cos(self._grad_angle), math.sin(self._grad_angle)
            span = max(abs(c) * (w - 1) + abs(s) * (h - 1), 1.0)
            rx = np.arange(w) * c / span
            ry = np.arange(h) * s / span
            ramp = ry[:, None] + rx[None, :] - min(0.0, c * (w - 1) / span) \
                - min(0.0, s * (h - 1) / span)  # 0 .. 1 across the frame
            img = img * (1.0 + cfg.gradient * (ramp - 0.5))
        if cfg.scan_noise_px > 0:
            img = _shift_rows(img, rng.normal(0.0, cfg.scan_noise_px, h))
        if cfg.dose is not None:
            img = rng.poisson(np.clip(img, 0, None) * cfg.dose) / cfg.dose
        sd = math.hypot(cfg.read_noise, cfg.noise_sigma) * cfg.a_peak
        if sd > 0:
            img = img + rng.normal(0.0, sd, img.shape)
        return np.clip(img, 0.0, None)


# ---------------------------------------------------------------------- helpers

def _validate(cfg: SimConfig) -> None:
    h, w = cfg.shape
    if h < 8 or w < 8:
        raise ValueError(f"shape must be at least 8x8, got {cfg.shape}")
    if not cfg.lattice_px >= 2.0:
        raise ValueError(f"lattice_px must be >= 2, got {cfg.lattice_px}")
    if cfg.wall_direction not in WALL_DIRECTIONS:
        raise ValueError(f"wall_direction must be one of {WALL_DIRECTIONS}")
    if not 1 <= cfg.n_variants <= 4:
        raise ValueError(f"n_variants must be 1..4, got {cfg.n_variants}")
    if cfg.dtype not in WIRE_DTYPES:
        raise ValueError(f"dtype must be one of {WIRE_DTYPES}, got {cfg.dtype!r}")
    if cfg.dose is not None and not cfg.dose > 0:
        raise ValueError(f"dose must be positive or None, got {cfg.dose}")
    if cfg.column_sigma_frac <= 0 or cfg.amorphous_regions < 0 or cfg.n_walls < 0:
        raise ValueError("column_sigma_frac must be > 0; counts must be >= 0")


def _render_gaussians(shape: tuple[int, int], x: np.ndarray, y: np.ndarray, peak: np.ndarray,
                      sigma: np.ndarray) -> np.ndarray:
    """Sum of isotropic Gaussians in +-4 sigma windows (separable, one bincount per width)."""
    h, w = shape
    flat = np.zeros(h * w)
    for s in np.unique(sigma):
        r = int(math.ceil(4.0 * s))
        sel = (sigma == s) & (x > -r - 1) & (x < w + r) & (y > -r - 1) & (y < h + r)
        if not sel.any():
            continue
        xs, ys, ps = x[sel], y[sel], peak[sel]
        offs = np.arange(-r, r + 1)
        px = np.rint(xs).astype(np.int64)[:, None] + offs
        py = np.rint(ys).astype(np.int64)[:, None] + offs
        gx = np.exp(-((px - xs[:, None]) ** 2) / (2 * s * s)) * ((px >= 0) & (px < w))
        gy = np.exp(-((py - ys[:, None]) ** 2) / (2 * s * s)) * ((py >= 0) & (py < h))
        vals = ps[:, None, None] * gy[:, :, None] * gx[:, None, :]
        idx = np.clip(py, 0, h - 1)[:, :, None] * w + np.clip(px, 0, w - 1)[:, None, :]
        flat += np.bincount(idx.ravel(), weights=vals.ravel(), minlength=h * w)
    return flat.reshape(h, w)


def _shift_rows(img: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Shift each scan line right by ``shifts[row]`` pixels (linear interpolation, edge clamp)."""
    h, w = img.shape
    src = np.arange(w)[None, :] - shifts[:, None]
    x0 = np.floor(src)
    f = src - x0
    i0 = np.clip(x0.astype(np.int64), 0, w - 1)
    i1 = np.clip(i0 + 1, 0, w - 1)
    rows = np.arange(h)[:, None]
    return img[rows, i0] * (1 - f) + img[rows, i1] * f


def _to_wire(img: np.ndarray, cfg: SimConfig) -> np.ndarray:
    """"<u2": A peak -> a_peak*dose counts (or U2_FULL_SCALE); "<f4": a_peak units."""
    if cfg.dtype == "<f4":
        return img.astype("<f4")
    scale = cfg.dose if cfg.dose is not None else U2_FULL_SCALE / cfg.a_peak
    return np.clip(np.rint(img * scale), 0, 65535).astype("<u2")


def _site_normals(lu: np.ndarray, lv: np.ndarray, seed: int) -> np.ndarray:
    """(N, 2) standard normals hashed from lattice site and seed: the same column keeps the
    same disorder in every frame, whatever window the frame happens to cover."""
    ku = (np.rint(2 * lu).astype(np.int64) + (1 << 30)).astype(np.uint64)
    kv = (np.rint(2 * lv).astype(np.int64) + (1 << 30)).astype(np.uint64)
    base = np.uint64((seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
    key = base ^ (ku * np.uint64(0xD1B54A32D192ED03)) ^ (kv * np.uint64(0x8CB92BA72F3D8DD7))
    u1 = (_splitmix64(key) >> np.uint64(11)).astype(float) / 2.0 ** 53
    u2 = (_splitmix64(key ^ np.uint64(0xA5A5A5A5)) >> np.uint64(11)).astype(float) / 2.0 ** 53
    r = np.sqrt(-2.0 * np.log1p(-u1))
    return np.stack([r * np.cos(2 * math.pi * u2), r * np.sin(2 * math.pi * u2)], axis=1)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _clip_line(p0: np.ndarray, d: np.ndarray, xmin: float, ymin: float, xmax: float,
               ymax: float, t_range: tuple[float, float] = (-math.inf, math.inf)
               ) -> tuple[float, float, float, float] | None:
    """Liang-Barsky: the part of the line p0 + t d, t in ``t_range`` (default: the infinite
    line; (0, 1): the segment p0 .. p0 + d), inside the rectangle, or None."""
    t0, t1 = t_range
    for p, q in ((-d[0], p0[0] - xmin), (d[0], xmax - p0[0]),
                 (-d[1], p0[1] - ymin), (d[1], ymax - p0[1])):
        if abs(p) < 1e-12:
            if q < 0:
                return None
            continue
        t = q / p
        if p < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
    if not t0 < t1:
        return None
    a, b = p0 + t0 * d, p0 + t1 * d
    return (float(a[0]), float(a[1]), float(b[0]), float(b[1]))
