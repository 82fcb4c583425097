"""Piezoresponse-force-microscopy-like frames with ground truth (no atoms): a/c domains.

A ferroelectric film (PbTiO3-like) seen by vertical PFM amplitude: c-domains (polarization out
of plane, strong response) and a-domains (in plane, weak response) alternate in stripes at 45
degrees to the scan; some a-domains are needles (wedges that taper to a tip inside a
c-domain); inside c-domains, 180-degree c+/c- walls are thin meandering lines of near-zero
amplitude (the response changes sign across them). Each scan line carries its own offset and
the fast-scan direction a little correlated noise, as real PFM scans do.

The truth is a per-pixel class map (0 = a, 1 = c+, 2 = c-) and :meth:`PFMTruth.ac_class`, the
a/c class (0 = a, 1 = c) at any key points, which is what a latent analysis is scored against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PFMConfig", "PFMFrame", "PFMSimulator", "PFMTruth"]


@dataclass(frozen=True)
class PFMConfig:
    """Parameters of a PFM-like frame (lengths in px, intensities in [0, 1])."""

    shape: tuple[int, int] = (256, 256)
    period_px: float = 96.0  # a/c stripe period, along the stripe normal
    a_fraction: float = 0.35  # share of a period that is a-domain
    angle_deg: float = 45.0  # stripe direction against the fast-scan axis
    n_needles: int = 2  # needle-like (wedge) a-domains inside c-domains
    needle_length_px: float = 90.0
    n_cc_walls: int = 1  # 180-degree c+/c- walls (meandering lines)
    a_level: float = 0.30  # amplitude of a-domains
    c_level: float = 0.75  # amplitude of c-domains
    wall_width_px: float = 1.5  # half width of a c-c wall's amplitude dip
    texture: float = 0.0  # a-domain fine stripe texture amplitude (twin-like; 0 = none)
    scan_line_noise: float = 0.03  # std of the per-line offset
    noise: float = 0.04  # per-pixel Gaussian noise std
    seed: int = 0


@dataclass
class PFMTruth:
    """Ground truth of one frame: ``classes`` (H, W) int8 0 = a, 1 = c+, 2 = c-."""

    classes: np.ndarray

    def ac_class(self, xy: np.ndarray) -> np.ndarray:
        """a/c class (0 = a, 1 = c) at key points x, y px: the class of the pixel a patch
        around the key point is centred on (coordinates rounded half up, ``floor(v + 0.5)``,
        as patch extraction rounds them; clipped to the frame).

        Parameters
        ----------
        xy : (N, 2) array_like of float
            Key points, x = column, y = row, px.

        Returns
        -------
        (N,) ndarray of int8
        """
        p = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        h, w = self.classes.shape
        c = np.clip(np.floor(p[:, 0] + 0.5).astype(int), 0, w - 1)
        r = np.clip(np.floor(p[:, 1] + 0.5).astype(int), 0, h - 1)
        return (self.classes[r, c] > 0).astype(np.int8)


@dataclass
class PFMFrame:
    """One frame: ``pixels`` (H, W) float32 amplitude, ``truth``, ``index``."""

    pixels: np.ndarray
    truth: PFMTruth
    index: int


class PFMSimulator:
    """Frames of one film area; ``frame(i)`` redraws the noise (seed + i), not the domains.

    Parameters
    ----------
    cfg : PFMConfig, optional
        Frame parameters.

    Raises
    ------
    ValueError
        If the shape is not two positive sizes, ``period_px`` <= 0 or ``a_fraction`` is not
        in (0, 1).
    """

    def __init__(self, cfg: PFMConfig | None = None) -> None:
        self.cfg = cfg or PFMConfig()
        h, w = self.cfg.shape
        if h < 1 or w < 1:
            raise ValueError(f"shape must be two positive sizes, got {self.cfg.shape!r}")
        if not self.cfg.period_px > 0:
            raise ValueError(f"period_px must be > 0, got {self.cfg.period_px!r}")
        if not 0.0 < self.cfg.a_fraction < 1.0:
            raise ValueError(f"a_fraction must be in (0, 1), got {self.cfg.a_fraction!r}")
        self.classes = self._domains()

    def _domains(self) -> np.ndarray:
        cfg = self.cfg
        rng = np.random.default_rng(cfg.seed)
        h, w = cfg.shape
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        t = np.deg2rad(cfg.angle_deg)
        u = xx * np.cos(t) + yy * np.sin(t)  # along the stripe normal
        v = -xx * np.sin(t) + yy * np.cos(t)  # along the stripes
        phase = rng.uniform(0, cfg.period_px)
        frac = ((u + phase) % cfg.period_px) / cfg.period_px
        a = frac < cfg.a_fraction
        # needles: wedges of a-domain growing from an a/c boundary into the c-domain
        for _ in range(cfg.n_needles):
            base_u = rng.uniform(0, cfg.period_px * 4) - phase
            base_u -= (base_u + phase) % cfg.period_px  # an a-stripe's start
            width = cfg.a_fraction * cfg.period_px * rng.uniform(0.3, 0.5)
            v0 = rng.uniform(v.min(), v.max() - cfg.needle_length_px)
            along = (v - v0) / cfg.needle_length_px
            taper = np.clip(1.0 - along, 0.0, 1.0) * (along >= 0)
            centre = base_u + cfg.a_fraction * cfg.period_px + 0.5 * width
            a |= (np.abs(u - centre) < 0.5 * width * taper) & (taper > 0)
        classes = np.where(a, 0, 1).astype(np.int8)
        # 180-degree walls inside c: meandering lines across the frame split c+ from c-
        minus = np.zeros((h, w), bool)
        for _ in range(cfg.n_cc_walls):
            y0 = rng.uniform(0.3, 0.7) * h
            amp, k, ph = rng.uniform(5, 15), rng.uniform(1, 3) * 2 * np.pi / w, rng.uniform(0, 6)
            line = y0 + amp * np.sin(k * xx + ph)
            minus ^= yy > line
        classes[(classes == 1) & minus] = 2
        return classes

    def frame(self, index: int = 0) -> PFMFrame:
        """Frame ``index``: amplitude image with noise drawn from ``seed + index + 1``.

        Parameters
        ----------
        index : int, optional
            Frame number (default 0).

        Returns
        -------
        PFMFrame
        """
        cfg = self.cfg
        rng = np.random.default_rng(cfg.seed + int(index) + 1)
        h, w = cfg.shape
        cls = self.classes
        img = np.where(cls == 0, cfg.a_level, cfg.c_level).astype(np.float64)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        t = np.deg2rad(cfg.angle_deg + 90.0)
        img += np.where(cls == 0, cfg.texture * np.sin((xx * np.cos(t) + yy * np.sin(t)) / 2.0),
                        0.0)
        # c+/c- walls: the amplitude dips to ~0 where the response changes sign
        flip = np.zeros((h, w), bool)
        flip[:-1] |= (cls[:-1] == 1) & (cls[1:] == 2) | (cls[:-1] == 2) & (cls[1:] == 1)
        flip[:, :-1] |= (cls[:, :-1] == 1) & (cls[:, 1:] == 2) | (
            (cls[:, :-1] == 2) & (cls[:, 1:] == 1))
        if flip.any():
            from scipy import ndimage  # noqa: PLC0415 - only frames with c-c walls need it

            dist = ndimage.distance_transform_edt(~flip)
            img *= 1.0 - np.exp(-0.5 * (dist / cfg.wall_width_px) ** 2)
        img += rng.normal(0, cfg.scan_line_noise, size=(h, 1))  # scan-line offsets
        img += rng.normal(0, cfg.noise, size=(h, w))
        return PFMFrame(pixels=np.clip(img, 0.0, 1.0).astype(np.float32),
                        truth=PFMTruth(classes=cls.copy()), index=int(index))
