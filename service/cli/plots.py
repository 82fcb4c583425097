"""PNG figures a person would rather look at than read: overlays and Pareto fronts."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the service and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rewardscope.engine.analysis import Analysis  # noqa: E402 (light: no engine stack)


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
    # fixed margins and a figure-level title: no tight_layout pass and no title placement
    # against the (hidden) axis, ~40 % of this figure's drawing time
    fig_h = fig.get_size_inches()[1]
    top = (0.12 + 0.2 * (title.count("\n") + 1)) / fig_h
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1.0 - top)
    fig.text(0.5, 1.0 - 0.06 / fig_h, title, ha="center", va="top", fontsize=10)
    fig.savefig(path, pil_kwargs={"compress_level": 1})
    plt.close(fig)


def warm() -> None:
    """Draw the overlay and the Pareto figure of a tiny made-up result into memory: loads
    fonts, colour maps and the Agg/PNG machinery once, so the next real figure costs only
    its own drawing (the picture process calls it while the analysis runs)."""
    import io  # noqa: PLC0415

    yy, xx = np.mgrid[0:32, 0:32]
    atoms = np.array([[8.0, 8.0], [24.0, 8.0], [8.0, 24.0], [24.0, 24.0]], np.float32)
    front = [{"workflow": "w", "params": {"p": i, ROUTE_PARAM: "a"},
              "rewards": {"r1": float(i), "r2": float(-i)}} for i in range(3)]
    demo = Analysis(atoms=atoms, labels=np.array([0, 1, -1, 0], np.int16),
                    walls=[[0.0, 16.0, 31.0, 16.0]], pareto=front, params={"w": front[1]["params"]},
                    arrays={"amorphous_mask": (xx > 20) & (yy > 20), "cells": atoms[:2],
                            "polarization": np.array([[0.1, 0.0], [0.0, 0.1]])})
    overlay((xx + yy) / 62.0, demo, io.BytesIO())
    pareto(demo, io.BytesIO())


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


ROUTE_PARAM = "descriptor"
"""A workflow parameter naming the route a candidate took (the domains workflow's descriptor
menu): on ``pareto.png`` each front point is marked and labelled by it."""
_ROUTE_MARKERS = "osD^vP<>"


def _route_markers(ax, entries: list[dict], pts: np.ndarray, chosen: dict | None) -> None:
    """Front points of a workflow with a route parameter: one marker per route (legend),
    each point labelled with its route; the chosen route is named in the legend."""
    routes = [e["params"].get(ROUTE_PARAM) for e in entries]
    if all(r is None for r in routes):
        return
    chosen_route = (chosen or {}).get(ROUTE_PARAM)
    for i, r in enumerate(dict.fromkeys(routes)):
        sel = np.array([q == r for q in routes])
        tag = f"{r} (chosen)" if r == chosen_route else str(r)
        ax.plot(pts[sel, 0], pts[sel, 1], _ROUTE_MARKERS[i % len(_ROUTE_MARKERS)], ms=8,
                mfc="none", color=f"C{(i + 1) % 10}", label=f"route {tag}")
    for (x, y), r in zip(pts, routes, strict=True):
        ax.annotate(str(r), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)


def _fixed_margins(fig, n: int, left: float = 0.9, right: float = 0.15, bottom: float = 0.6,
                   top: float = 0.35, gap: float = 1.0) -> None:
    """Margins of a one-row figure of ``n`` panels in inches (room for tick labels and axis
    labels): what ``tight_layout`` finds, without its extra layout pass over every tick
    label (a third of the figure's drawing time)."""
    w, h = fig.get_size_inches()
    panel = (w - left - right - (n - 1) * gap) / n
    fig.subplots_adjust(left=left / w, right=1.0 - right / w, bottom=bottom / h,
                        top=1.0 - top / h, wspace=gap / panel if n > 1 else 0.0)


def pareto(analysis: Analysis, path: str | Path) -> dict[str, list[str]]:
    """One panel per workflow: its Pareto front over the first two rewards, the knee starred;
    a workflow with a route parameter (``ROUTE_PARAM``) gets its points marked and labelled
    by route, the chosen route named in the legend. Returns each panel's legend entries
    (workflow -> labels), what the figure states in words."""
    legends: dict[str, list[str]] = {}
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
        _route_markers(ax, entries, pts, chosen)
        knee = [e for e in entries if e["params"] == chosen]
        if knee:
            k = knee[0]["rewards"]
            route = knee[0]["params"].get(ROUTE_PARAM)
            label = "knee" if route is None else f"knee (chosen: {route})"
            ax.plot(k[names[0]], k[names[1]], "*", ms=18, color="tab:red", label=label)
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
        ax.locator_params(axis="x", nbins=4)  # long tick labels of small rewards must not touch
        # a fixed title height: matplotlib's automatic one measures every tick label of the
        # panel first (~30 % of drawing this figure); no panel has ticks on top to avoid
        ax.set_title(wf, y=1.0)
        legend = ax.legend(fontsize=8)
        legends[wf] = [t.get_text() for t in legend.get_texts()]
    _fixed_margins(fig, n)
    fig.savefig(path, pil_kwargs={"compress_level": 1})
    plt.close(fig)
    return legends


def latent(image: np.ndarray, analysis: Analysis, path: str | Path) -> None:
    """The latent analysis in one figure: left, the latent means (z1, z2; z1 against the
    rotation angle for a one-dimensional latent) of every encoded key point coloured by its
    latent label; right, the frame in grey with the key points coloured by the same labels
    (the label map on the frame) and the latent walls in red. Without a model (or with
    nothing encoded) the figure says so.

    Parameters
    ----------
    image : (H, W) ndarray of float
        The frame as the engine saw it, ~[0, 1].
    analysis : Analysis
        A result with the latent workflow's arrays (``keypoints``, ``latent``,
        ``latent_labels``, ``latent_walls``) and its ``model`` scalar.
    path : str or Path
        PNG file written.
    """
    import matplotlib  # noqa: PLC0415 - lazy: a cold `analyze` imports no plotting it skips

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    h, w = image.shape
    kp = np.asarray(analysis.arrays.get("keypoints", np.zeros((0, 2))), float).reshape(-1, 2)
    z = np.asarray(analysis.arrays.get("latent", np.zeros((len(kp), 0))), float)
    lab = np.asarray(analysis.arrays.get("latent_labels", np.full(len(kp), -1)), int)
    angle = np.asarray(analysis.arrays.get("latent_angle", np.full(len(kp), np.nan)), float)
    model = analysis.scalars.get("model") or {}
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(13, 6.2), dpi=100)
    ok = (np.all(np.isfinite(z), axis=1) if z.ndim == 2 and z.shape[1] else
          np.zeros(len(kp), bool))
    if ok.any():
        x = z[ok, 0]
        y = z[ok, 1] if z.shape[1] >= 2 else angle[ok]
        ax0.scatter(x, y, s=5, c=np.where(lab[ok] >= 0, lab[ok], 9), cmap="tab10", vmin=0,
                    vmax=9, linewidths=0)
        ax0.set_xlabel("z1")
        ax0.set_ylabel("z2" if z.shape[1] >= 2 else "rotation latent (rad)")
    else:
        ax0.text(0.5, 0.5, "no model in use: nothing encoded", ha="center", va="center",
                 transform=ax0.transAxes)
    ax0.set_title(f"latent of {int(ok.sum())} key points, model {model.get('id')}",
                  fontsize=9)
    ax1.imshow(image, cmap="gray", interpolation="nearest")
    if len(kp):
        key = lab >= 0
        ax1.scatter(kp[~key, 0], kp[~key, 1], s=3, c="0.6", linewidths=0)
        if key.any():
            ax1.scatter(kp[key, 0], kp[key, 1], s=8, c=lab[key], cmap="tab10", vmin=0,
                        vmax=9, linewidths=0)
    walls = np.asarray(analysis.arrays.get("latent_walls", np.zeros((0, 4))), float)
    for x0, y0, x1, y1 in walls.reshape(-1, 4):
        ax1.plot([x0, x1], [y0, y1], color="red", lw=2)
    n_lab = len(np.unique(lab[lab >= 0]))
    ax1.set_title(f"latent labels on the frame ({n_lab} classes), {len(walls)} latent walls",
                  fontsize=9)
    ax1.set_xlim(-0.5, w - 0.5)
    ax1.set_ylim(h - 0.5, -0.5)
    ax1.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, pil_kwargs={"compress_level": 1})
    plt.close(fig)
