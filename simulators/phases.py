"""Low-magnification frames of two phases that differ in texture only, with per-pixel truth.

At a magnification where atomic columns are not resolved, two structural phases (e.g. a
rhombohedral and an orthorhombic region of a film) still differ in how the image looks
locally: their diffraction-contrast texture has a different dominant spatial frequency and
orientation (a change of FFT pattern). This simulator renders each phase as an anisotropic
band-limited random texture (white noise filtered in Fourier space around a wavevector
+-k of the phase, with an angular and radial spread), so nothing is periodic enough to be
mistaken for a lattice of columns, and joins the two along a straight boundary through a
random point at a random orientation. ``n_phases=1`` gives single-phase frames (texture A
only, the same noise), on which the right answer is "one phase, no boundary".

Frame = ``background + contrast * texture + gradient`` plus Gaussian noise (in units of the
texture's standard deviation, ``noise``) and an optional linear intensity gradient.

Coordinates: x = column, y = row, px, pixel centres at integers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["PhaseConfig", "PhaseFrame", "PhaseSimulator"]


@dataclass
class PhaseConfig:
    """Everything that defines one simulated low-magnification acquisition.

    Attributes
    ----------
    shape : (int, int)
        Frame (H, W), px.
    n_phases : int
        1 (single phase, texture A everywhere) or 2 (A and B either side of a boundary).
    period_px : (float, float)
        Dominant texture period of phase A and phase B, px.
    orientation_deg : (float, float) or None
        Direction of the dominant wavevector of A and B, degrees; None draws A at random
        and B at 45-90 degrees from it.
    angular_spread_deg : float
        Angular half width of each texture's spectral peak, degrees (anisotropy).
    radial_spread : float
        Relative radial half width of each spectral peak (fraction of 1 / period).
    noise : float
        Additive Gaussian noise std, in units of the texture's std.
    gradient : float
        Linear intensity gradient across the frame, in units of the texture's std.
    minority : float
        Least area fraction of the smaller phase (the boundary is drawn until it holds).
    seed : int
        Random seed: texture, boundary, noise.
    """

    shape: tuple[int, int] = (256, 256)
    n_phases: int = 2
    period_px: tuple[float, float] = (6.0, 9.0)
    orientation_deg: tuple[float, float] | None = None
    angular_spread_deg: float = 12.0
    radial_spread: float = 0.15
    noise: float = 0.5
    gradient: float = 0.0
    minority: float = 0.25
    seed: int = 0


@dataclass
class PhaseFrame:
    """One rendered frame and its truth.

    Attributes
    ----------
    image : (H, W) ndarray of float32
        The frame, arbitrary intensity units (background 1, texture std 0.2).
    truth : (H, W) ndarray of int16
        Phase of each pixel (0 = A, 1 = B); all 0 on single-phase frames.
    boundary : (4,) ndarray of float64 or None
        The boundary line clipped to the frame, [x0, y0, x1, y1] px; None for one phase.
    orientation_deg : (float, float)
        Orientation of A's and B's wavevectors actually used, degrees.
    """

    image: np.ndarray
    truth: np.ndarray
    boundary: np.ndarray | None
    orientation_deg: tuple[float, float] = field(default=(0.0, 0.0))


def _texture(shape: tuple[int, int], period: float, theta: float, ang_spread: float,
             rad_spread: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-std anisotropic band-limited noise with its spectral peak at +-k(period, theta)."""
    h, w = shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    f = np.hypot(fx, fy)
    ang = np.arctan2(fy, fx)
    d_ang = np.angle(np.exp(2j * (ang - theta))) / 2.0  # +-k: angles modulo pi
    f0 = 1.0 / period
    filt = (np.exp(-0.5 * ((f - f0) / (rad_spread * f0)) ** 2)
            * np.exp(-0.5 * (d_ang / ang_spread) ** 2))
    spec = np.fft.fft2(rng.standard_normal(shape)) * filt
    tex = np.real(np.fft.ifft2(spec))
    sd = tex.std()
    return tex / sd if sd > 0 else tex


def _clip_line(p: np.ndarray, u: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The part of the line p + t u inside the frame, [x0, y0, x1, y1] px."""
    h, w = shape
    ts = []
    for k, hi in ((0, w - 0.5), (1, h - 0.5)):
        if abs(u[k]) > 1e-12:
            ts += [(-0.5 - p[k]) / u[k], (hi - p[k]) / u[k]]
    pts = [p + t * u for t in ts]
    inside = [q for q in pts if -0.5 - 1e-6 <= q[0] <= w - 0.5 + 1e-6
              and -0.5 - 1e-6 <= q[1] <= h - 0.5 + 1e-6]
    if len(inside) < 2:
        return np.array([p[0], p[1], p[0], p[1]], dtype=np.float64)
    inside.sort(key=lambda q: float(q @ u))
    return np.array([*inside[0], *inside[-1]], dtype=np.float64)


class PhaseSimulator:
    """Frames of :class:`PhaseConfig`; ``frame(i)`` renders frame ``i`` (seed + i).

    Parameters
    ----------
    config : PhaseConfig, optional
        The acquisition (default ``PhaseConfig()``).

    Raises
    ------
    ValueError
        If ``n_phases`` is not 1 or 2, a period is not > 2 px, ``noise`` or ``gradient`` is
        negative, or ``minority`` is not in [0, 0.5).
    """

    def __init__(self, config: PhaseConfig | None = None) -> None:
        self.config = config or PhaseConfig()
        c = self.config
        if c.n_phases not in (1, 2):
            raise ValueError(f"n_phases must be 1 or 2, got {c.n_phases!r}")
        if not all(float(p) > 2.0 for p in c.period_px):
            raise ValueError(f"period_px must be > 2 px (Nyquist), got {c.period_px!r}")
        if c.noise < 0 or c.gradient < 0:
            raise ValueError(f"noise and gradient must be >= 0, got {c.noise!r}, {c.gradient!r}")
        if not 0.0 <= c.minority < 0.5:
            raise ValueError(f"minority must be in [0, 0.5), got {c.minority!r}")

    def frame(self, index: int = 0) -> PhaseFrame:
        """Render frame ``index``.

        Parameters
        ----------
        index : int, optional
            Frame index (added to the seed; default 0).

        Returns
        -------
        PhaseFrame
            Image and per-pixel truth.
        """
        c = self.config
        rng = np.random.default_rng(int(c.seed) + int(index))
        h, w = (int(s) for s in c.shape)
        if c.orientation_deg is None:
            ta = rng.uniform(0.0, 180.0)
            tb = ta + rng.choice([-1.0, 1.0]) * rng.uniform(45.0, 90.0)
        else:
            ta, tb = (float(t) for t in c.orientation_deg)
        spread = math.radians(c.angular_spread_deg)
        tex_a = _texture((h, w), c.period_px[0], math.radians(ta), spread, c.radial_spread, rng)
        truth = np.zeros((h, w), dtype=np.int16)
        boundary = None
        if c.n_phases == 2:
            tex_b = _texture((h, w), c.period_px[1], math.radians(tb), spread, c.radial_spread,
                             rng)
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
            for _ in range(100):
                phi = rng.uniform(0.0, math.pi)
                p = np.array([rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h])
                n = np.array([-math.sin(phi), math.cos(phi)])
                side = ((xx - p[0]) * n[0] + (yy - p[1]) * n[1]) > 0
                frac = side.mean()
                if min(frac, 1.0 - frac) >= c.minority:
                    break
            truth = side.astype(np.int16)
            boundary = _clip_line(p, np.array([math.cos(phi), math.sin(phi)]), (h, w))
            tex = np.where(side, tex_b, tex_a)
        else:
            tex = tex_a
        img = tex + c.noise * rng.standard_normal((h, w))
        if c.gradient:
            g = rng.uniform(0.0, 2.0 * math.pi)
            ramp = (np.cos(g) * np.arange(w)[None, :] / w + np.sin(g) * np.arange(h)[:, None] / h)
            img = img + c.gradient * ramp
        image = (1.0 + 0.2 * img).astype(np.float32)
        return PhaseFrame(image=image, truth=truth, boundary=boundary,
                          orientation_deg=(float(ta) % 180.0, float(tb) % 180.0))
