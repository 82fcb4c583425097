"""PNG figures a person would rather look at than read: overlays and Pareto fronts."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the service and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rewardscope.engine.analysis import Analysis  # noqa: E402


def overlay(image: np.ndarray, analysis: Analysis, path: str | Path) -> None:
    """Frame in grey, atoms coloured by label (-1 grey), walls in red, amorphous outline cyan."""
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
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_axis_off()
    ax.set_title(f"{len(atoms)} atoms, {len(analysis.walls)} walls")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


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
