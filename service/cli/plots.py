"""PNG figures a person would rather look at than read: overlays and Pareto fronts."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the service and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rewardscope.engine.analysis import Analysis  # noqa: E402


def overlay(image: np.ndarray, analysis: Analysis, path: str | Path) -> None:
    """Frame in grey, atoms coloured by label (-1 grey), walls in red, amorphous outline cyan,
    and the polarization map (when the result has ``cells`` and ``polarization``) as arrows
    from each cell centre, coloured by direction (hsv) and magnified so that sub-pixel
    displacements are visible; the magnification is in the title."""
    h, w = image.shape
    fig, ax = plt.subplots(figsize=(8, 8 * h / w), dpi=100)
    ax.imshow(image, cmap="gray", interpolation="nearest")
    atoms, labels = analysis.atoms, analysis.labels
    if len(atoms):
        key = labels >= 0
        ax.scatter(atoms[~key, 0], atoms[~key, 1], s=4, c="0.6", linewidths=0)
        if key.any():
            ax.scatter(atoms[key, 0], atoms[key, 1], s=6, c=labels[key], cmap="tab10",
                       vmin=0, vmax=9, linewidths=0)
    for x0, y0, x1, y1 in analysis.walls:
        ax.plot([x0, x1], [y0, y1], color="red", lw=2)
    mask = analysis.arrays.get("amorphous_mask")
    if mask is not None and np.any(mask):
        ax.contour(np.asarray(mask, float), levels=[0.5], colors="cyan", linewidths=1.5)
    title = f"{len(atoms)} atoms, {len(analysis.walls)} walls"
    cells, vec = analysis.arrays.get("cells"), analysis.arrays.get("polarization")
    if cells is not None and vec is not None and len(cells) and len(cells) == len(vec):
        gain = _arrows(ax, np.asarray(cells, float), np.asarray(vec, float))
        title += f"\npolarization: arrows = B displacement x {gain:g}, colour = direction"
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


ARROW_FILL = 0.5  # the median arrow spans this fraction of the median cell spacing


def arrow_gain(cells: np.ndarray, vectors: np.ndarray) -> float:
    """Magnification making the median arrow ~ARROW_FILL of the cell spacing, a 1-2-5 number.

    Displacements are a few percent of a lattice spacing: drawn to scale they are dots. The
    gain is rounded down to 1, 2 or 5 x 10^k so the title can state it plainly.

    Parameters
    ----------
    cells : (M, 2) ndarray of float
        Cell centres x, y in px.
    vectors : (M, 2) ndarray of float
        Displacements dx, dy in px.

    Returns
    -------
    float
        The gain (>= 1; 1 when every displacement is 0 or there are fewer than 2 cells).
    """
    from scipy.spatial import cKDTree

    mag = float(np.median(np.hypot(vectors[:, 0], vectors[:, 1]))) if len(vectors) else 0.0
    if len(cells) < 2 or mag <= 0:
        return 1.0
    spacing = float(np.median(cKDTree(cells).query(cells, k=2)[0][:, 1]))
    raw = ARROW_FILL * spacing / mag
    if raw <= 1:
        return 1.0
    exp = 10.0 ** np.floor(np.log10(raw))
    return float(max(m for m in (1.0, 2.0, 5.0) if m * exp <= raw) * exp)


def _arrows(ax, cells: np.ndarray, vectors: np.ndarray) -> float:
    """Quiver of the displacements (gain from :func:`arrow_gain`), hsv by angle; returns the
    gain. Angles are image angles (y down), as drawn."""
    gain = arrow_gain(cells, vectors)
    angle = np.arctan2(vectors[:, 1], vectors[:, 0])
    ax.quiver(cells[:, 0], cells[:, 1], vectors[:, 0] * gain, vectors[:, 1] * gain, angle,
              cmap="hsv", clim=(-np.pi, np.pi), angles="xy", scale_units="xy", scale=1.0,
              width=0.003, headwidth=3.5, headlength=4.0, headaxislength=3.5)
    return gain


def pareto(analysis: Analysis, path: str | Path) -> None:
    """One panel per workflow: its Pareto front over the first two rewards, the knee starred."""
    by_wf: dict[str, list[dict]] = {}
    for entry in analysis.pareto:
        by_wf.setdefault(entry.get("workflow", "?"), []).append(entry)
    n = max(1, len(by_wf))
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 4), dpi=100, squeeze=False)
    for ax, (wf, entries) in zip(axes[0], by_wf.items(), strict=False):
        names = list(entries[0]["rewards"])[:2]
        if len(names) < 2:
            names = names * 2
        pts = np.array([[e["rewards"][names[0]], e["rewards"][names[1]]] for e in entries])
        order = np.argsort(pts[:, 0])
        ax.plot(pts[order, 0], pts[order, 1], "o-", color="tab:blue", label="Pareto front")
        chosen = analysis.params.get(wf)
        knee = [e for e in entries if e["params"] == chosen]
        if knee:
            k = knee[0]["rewards"]
            ax.plot(k[names[0]], k[names[1]], "*", ms=18, color="tab:red", label="knee")
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
        ax.set_title(wf)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
