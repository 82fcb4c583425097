"""A small scan controller: listens to the service's suggestions and steers a microscope.

The controller subscribes to the results socket for ``[b"result", ...]``, ``[b"regions", ...]``
and ``[b"scan", ...]`` messages (docs/PROTOCOL.md) and decides where the next frame is taken.
The microscope is anything with ``scan(center_m, fov_m, rotation_rad)`` (the digital twin,
:class:`rewardscope.simulators.twin.Twin`, in-process); the controller never touches the
service's internals, only its sockets.

Strategies (one frame budget for all):

``rewardscope``
    client-side experiment design on the service's messages. *Survey* at a lower magnification
    (``survey_fov_factor`` x the base field of view per frame, 2 by default: 6 px per lattice
    spacing on the twin; the service's per-cell polarization map still holds there and it
    suggests each domain of another variant, reason ``domain``), on a grid that tiles the
    sample. Every frame's published walls (``result.walls``, mapped to instrument metres
    through the view the controller set) are sampled into points and covered by
    *high-magnification* views (side ``base_fov / 2``: pixel size <= base / 2) on a grid over
    their extent, only the tiles that hold wall; a wall that leaves the frame through its edge
    is *followed*: a view centred past the edge along the wall's direction is queued first, so
    a wall is imaged stretch by stretch across fields. The frame's other suggestions
    (``domain``, ``amorphous``, ``junction``, ``instability``, ``uncertainty``, ``novelty``;
    ``wall`` ones when the frame's result carries no walls; the released ``scan``) are imaged at
    high magnification: a box larger than one zoomed view (a domain seen in the overview) is
    tiled by zoomed views, a smaller one is imaged at its centre. A planned view whose targets
    all lie inside views already imaged at high magnification is skipped. With nothing planned:
    the next survey position. In ``approve`` mode the top pending suggestion of the frame (then
    of earlier frames) is approved over the control socket and imaged with its field of view
    clamped the same way.
``raster``
    visit the base fields of view in raster order, imaging each quadrant zoomed x2.
``random``
    uniform random positions, magnification drawn from {1, 2, 4}.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import zmq

from rewardscope import protocol
from rewardscope.clients.client import ControlClient, ResultsClient

STRATEGIES = ("rewardscope", "raster", "random")
TOPIC_REGIONS = getattr(protocol, "TOPIC_REGIONS", b"regions")
TOPIC_SCAN = getattr(protocol, "TOPIC_SCAN", b"scan")
HIGH_MAG = 2.0  # a view zoomed at least this much covers its suggestions (see the twin)
SURVEY_FOV_FACTOR = 2.0
"""Survey field of view / base field of view: 6 px per lattice spacing at the twin's base
12 px. The service rarely draws wall segments at that scale, but its per-cell polarization
map still holds, and it suggests each domain of another variant (reason ``domain``), whose
box is then tiled at high magnification (at 4/3, 9 px, walls are drawn in the overview, but
the survey alone takes 36 of 40 frames on 8 x 8 fields of view)."""
PLAN_FILL = 0.9
"""A planned high-magnification view counts on its central ``PLAN_FILL`` x side only (walls
located on a lower-magnification frame are off by a few pixels)."""
EDGE_FRACTION = 0.03
"""A wall end within this fraction of the frame side of its edge leaves the frame (0.1 was
tried: more follow-ups, fewer walls found over seeds 0-9)."""


def decode_message(parts: list[bytes]) -> tuple[str, object]:
    """Decode one results-socket message into ``(topic, payload)``.

    Results become :class:`protocol.Result`; regions and scans become plain maps (the
    service's ``protocol.decode_regions`` / ``decode_scan`` when present, else the raw
    header); status and error maps as :func:`protocol.decode_event` gives them.
    """
    topic = bytes(parts[0])
    if topic == protocol.TOPIC_RESULT:
        return "result", protocol.decode_result(parts)
    if topic in (TOPIC_REGIONS, TOPIC_SCAN):
        name = topic.decode()
        fn = getattr(protocol, f"decode_{name}", None)
        if fn is None:
            return name, protocol.unpack_map(parts[1])
        obj = fn(parts)
        return name, dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(obj)
    return protocol.decode_event(parts)


class Controller:
    """Decides the next field of view of ``scope`` from the service's messages.

    Parameters
    ----------
    scope : object
        The microscope: ``scan(center_m, fov_m, rotation_rad)``, attributes ``side_m`` (sample
        side, m), ``base_fov_m`` (base field of view, m) and ``config.fovs`` (FOVs per side).
    results_url : str, optional
        The service's results PUB endpoint; None = no service (raster/random only).
    strategy : str
        One of :data:`STRATEGIES`.
    control_url : str, optional
        The service's control REP endpoint; needed when ``approve`` is True.
    approve : bool
        Approve suggestions over the control socket (service in ``regions_mode = "approve"``)
        instead of following the released scans (``"auto"``).
    seed : int
        Seed of the random strategy.
    survey_fov_factor : float
        Survey field of view, in base fields of view (rewardscope strategy).
    """

    def __init__(self, scope, results_url: str | None = None, *, strategy: str = "rewardscope",
                 control_url: str | None = None, approve: bool = False, seed: int = 0,
                 context: zmq.Context | None = None,
                 survey_fov_factor: float = SURVEY_FOV_FACTOR) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if approve and control_url is None:
            raise ValueError("approve mode needs control_url")
        if strategy == "rewardscope" and results_url is None:
            raise ValueError("the rewardscope strategy needs the service's results_url")
        if not (math.isfinite(survey_fov_factor) and survey_fov_factor > 0):
            raise ValueError(f"survey_fov_factor must be positive, got {survey_fov_factor!r}")
        self.scope, self.strategy, self.approve = scope, strategy, approve
        self.survey_fov_factor = float(survey_fov_factor)
        self.rng = np.random.default_rng([seed, 0xC0])
        self.results = None if results_url is None else ResultsClient(
            results_url, topics=(protocol.TOPIC_RESULT, protocol.TOPIC_ERROR, TOPIC_REGIONS,
                                 TOPIC_SCAN), context=context)
        self.control = None if control_url is None else ControlClient(control_url,
                                                                      context=context)
        self._raster = 0  # next base field of view (rewardscope survey / raster)
        self.results_by_seq: dict[int, object] = {}
        self.regions_by_seq: dict[int, list[dict]] = {}
        self.scans_by_seq: dict[int, list[dict]] = {}
        self.errors: list[dict] = []
        self.followed: list[str] = []  # ids of suggestions scanned, in order
        self.skipped: list[str] = []  # released scans inside views already imaged
        self._followed_set: set[str] = set()  # those, and suggestions refused on approve
        self._zoomed: list[tuple[float, float, float]] = []  # (cx, cy, half side) m
        self.last: dict = {}  # the last decision: {"kind": ..., "id": ..., "center_m": ...}
        self.queue: list[dict] = []  # planned views, next first (rewardscope, auto)
        self._current: dict | None = None  # the view set for the frame being taken
        self.views_by_seq: dict[int, dict] = {}  # the view each frame was taken with

    # ------------------------------------------------------------------ messages
    def handle(self, topic: str, payload) -> None:
        """Book one decoded message (see :func:`decode_message`)."""
        if topic == "result":
            self.results_by_seq[int(payload.seq)] = payload
        elif topic == "regions":
            self.regions_by_seq.setdefault(int(payload["seq"]), []).extend(payload["regions"])
        elif topic == "scan":
            self.scans_by_seq.setdefault(int(payload["seq"]), []).append(payload)
        elif topic == "error":
            self.errors.append(payload)

    def poll(self, timeout_s: float) -> bool:
        """Receive and book at most one message; False when none came within ``timeout_s``."""
        if self.results is None or not self.results.sock.poll(int(timeout_s * 1000)):
            return False
        self.handle(*decode_message(self.results.sock.recv_multipart()))
        return True

    def wait_for(self, seq: int, timeout_s: float = 60.0, grace_s: float = 0.3) -> bool:
        """Wait for frame ``seq``'s result (or error), then up to ``grace_s`` for its regions
        and, when the service releases scans itself (not ``approve``), its scan.

        Returns
        -------
        bool
            True when the frame's result (or an error about it) arrived within ``timeout_s``.
        """
        if self.results is None:
            return True
        deadline = time.monotonic() + timeout_s
        while seq not in self.results_by_seq and not self._errored(seq):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.poll(min(left, 0.5))
        end = time.monotonic() + grace_s
        while (left := end - time.monotonic()) > 0:
            if seq in self.scans_by_seq or (self.approve and seq in self.regions_by_seq):
                break
            if seq in self.regions_by_seq:  # the scan follows its regions at once
                end = min(end, time.monotonic() + 0.1)
            self.poll(left)
        while self.poll(0.0):  # drain what is already there
            pass
        return True

    def _errored(self, seq: int) -> bool:
        return any(e.get("seq") == seq for e in self.errors)

    # ------------------------------------------------------------------ decisions
    def next_view(self, seq: int) -> dict:
        """Where to image after frame ``seq``: ``{center_m, fov_m, rotation_rad, kind, id}``."""
        if self.strategy == "raster":
            view = self._raster_quadrant()
        elif self.strategy == "random":
            view = self._random()
        else:
            view = self._follow(seq) or self._survey()
        self.last = view
        return view

    def step(self, seq: int) -> dict:
        """Decide the next view after frame ``seq`` and send it to the microscope."""
        if self._current is not None:
            self.views_by_seq.setdefault(seq, self._current)
        view = self.next_view(seq)
        view["set"] = self.scope.scan(view["center_m"], view["fov_m"], view["rotation_rad"])
        self._book(view["set"])
        self._current = view["set"]
        return view

    def _book(self, actual: dict) -> None:
        """Remember a zoomed view (as an axis-aligned square around its centre)."""
        if actual["magnification"] >= HIGH_MAG:
            half = 0.5 * actual["fov_m"] * (abs(math.cos(actual["rotation_rad"]))
                                            + abs(math.sin(actual["rotation_rad"])))
            self._zoomed.append((actual["center_m"][0], actual["center_m"][1], half))

    def _follow(self, seq: int) -> dict | None:
        """Approve mode: the frame's best approvable suggestion, else the best of earlier
        frames. Auto mode: plan the frame's views (:meth:`plan`), then the first planned view
        whose targets are not all imaged at high magnification yet."""
        if self.approve:
            return self._approve_best(self.regions_by_seq.get(seq, [])) or \
                self._approve_best(self._backlog(seq))
        self.plan(seq)
        while self.queue:
            view = self.queue.pop(0)
            if all(self._covered({"center_m": p, "fov_m": 0.0}) for p in view["targets"]):
                self.skipped.append(str(view.get("id")))
                continue  # inside views already imaged at high magnification
            if view.get("id") is not None:
                self.followed.append(str(view["id"]))
                self._followed_set.add(str(view["id"]))
            return {k: v for k, v in view.items() if k != "targets"}
        return None

    # ------------------------------------------------------------------ planning
    @property
    def high_fov_m(self) -> float:
        """Side of a high-magnification view: pixel size = base pixel size / ``HIGH_MAG``."""
        return self.scope.base_fov_m / HIGH_MAG

    def frame_to_sample(self, seq: int, xy_px) -> np.ndarray | None:
        """Frame ``seq``'s pixels (N, 2) (x = column) -> instrument metres, through the view
        the controller set for it (docs/PROTOCOL.md: ``origin + R(rot) @ (px * pixel)``,
        pixel centres at integers); None when the view is unknown."""
        view = self.views_by_seq.get(seq)
        if view is None:
            return None
        n = self._frame_px(seq)
        ps = float(view["fov_m"]) / n
        rot = float(view.get("rotation_rad") or 0.0)
        c, s = math.cos(rot), math.sin(rot)
        r = np.array([[c, -s], [s, c]])
        xy = np.asarray(xy_px, float).reshape(-1, 2) - 0.5 * (n - 1)
        return np.asarray(view["center_m"], float) + (xy * ps) @ r.T

    def _frame_px(self, seq: int) -> int:
        res = self.results_by_seq.get(seq)
        arrays = getattr(res, "arrays", None) or {}
        for name in ("amorphous_mask", "region_labels"):
            a = arrays.get(name)
            if a is not None and np.ndim(a) == 2:
                return int(max(np.shape(a)))
        return int(self.scope.config.fov_px)

    def plan(self, seq: int) -> None:
        """Queue high-magnification views for frame ``seq``'s findings (see the module doc):
        wall-following views first, then tiles over its walls, then its other suggestions."""
        n = self._frame_px(seq)
        h = self.high_fov_m
        res = self.results_by_seq.get(seq)
        walls = np.asarray(getattr(res, "walls", None) or [], float).reshape(-1, 4)
        follow, pts = [], []
        view = self.views_by_seq.get(seq)
        if len(walls) and view is not None:
            step_px = max(1.0, 0.125 * h / (float(view["fov_m"]) / n))
            edge = EDGE_FRACTION * n
            for x0, y0, x1, y1 in walls:
                k = int(math.ceil(math.hypot(x1 - x0, y1 - y0) / step_px)) + 1
                t = np.linspace(0.0, 1.0, k)[:, None]
                pts.append(self.frame_to_sample(seq, (1 - t) * [x0, y0] + t * [x1, y1]))
                for (ax, ay), (bx, by) in (((x0, y0), (x1, y1)), ((x1, y1), (x0, y0))):
                    if min(bx, by) <= edge - 0.5 or max(bx, by) >= n - 0.5 - edge:
                        follow.append(self._continue(seq, (ax, ay), (bx, by)))
        queued = [v for v in follow if v is not None and not self._planned(v["center_m"])]
        if pts:
            queued += self._tiles(np.vstack(pts), seq)
        for s in self._extra_suggestions(seq, bool(len(walls))):
            c = [float(v) for v in s["center_m"]]
            if float(s["fov_m"]) > h * (1 + 1e-9):  # larger than one zoomed view: tile its box
                tiles = self._box_tiles(s)
                for t in tiles:
                    t["id"] = s.get("id")
                if tiles:
                    queued += tiles
                    continue
            if self._covered({"center_m": c, "fov_m": 0.0}) or self._planned(c):
                self._followed_set.add(str(s.get("id")))
                self.skipped.append(str(s.get("id")))
                continue
            queued.append({"kind": "suggestion", "id": s.get("id"), "center_m": c,
                           "fov_m": h,  # holds the box; pixel size = base / HIGH_MAG
                           "rotation_rad": float(s.get("rotation_rad") or 0.0),
                           "reason": s.get("reason"), "targets": [c]})
        self.queue[:0] = queued  # this frame's findings first: follow the wall at hand

    def _continue(self, seq: int, a, b) -> dict | None:
        """A view past wall end ``b`` (frame px, at the frame's edge), along ``a`` -> ``b``."""
        ends = self.frame_to_sample(seq, [a, b])
        d = ends[1] - ends[0]
        norm = float(np.hypot(*d))
        if norm <= 0:
            return None
        h = self.high_fov_m
        u = d / norm
        centre = ends[1] + 0.4 * h * u
        side = self.scope.side_m
        if not (0.0 <= centre[0] <= side and 0.0 <= centre[1] <= side):
            return None
        targets = [[float(v) for v in ends[1] + f * h * u] for f in (0.1, 0.4)]
        if all(self._covered({"center_m": p, "fov_m": 0.0}) for p in targets):
            return None
        return {"kind": "follow", "id": None, "center_m": [float(v) for v in centre],
                "fov_m": h, "rotation_rad": 0.0, "reason": "wall", "targets": targets}

    def _tiles(self, pts: np.ndarray, seq: int) -> list[dict]:
        """High-magnification views over the wall points ``pts`` (N, 2) m not imaged yet: a
        grid over their extent, only the tiles holding points, one view per tile."""
        pts = np.array([p for p in pts if not self._covered({"center_m": p, "fov_m": 0.0})
                        and not self._planned(p)]).reshape(-1, 2)
        if not len(pts):
            return []
        h = self.high_fov_m
        eff = PLAN_FILL * h
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        k = np.maximum(1, np.ceil((hi - lo) / eff - 1e-9)).astype(int)
        cell = (hi - lo) / k
        idx = np.minimum(((pts - lo) / np.where(cell > 0, cell, 1.0)).astype(int), k - 1)
        out = []
        for i, j in sorted({(int(a), int(b)) for a, b in idx}, key=lambda t: (t[1], t[0])):
            mine = pts[(idx[:, 0] == i) & (idx[:, 1] == j)]
            centre = lo + (np.array([i, j]) + 0.5) * cell
            out.append({"kind": "wall", "id": None, "center_m": [float(v) for v in centre],
                        "fov_m": h, "rotation_rad": 0.0, "reason": "wall",
                        "targets": [[float(v) for v in p] for p in mine]})
        return out

    def _box_tiles(self, s: dict) -> list[dict]:
        """High-magnification views tiling suggestion ``s``'s field (the square of side
        ``fov_m`` around ``center_m``, the box's longer side): a grid of points over it at
        an eighth of a zoomed view, then :meth:`_tiles` (only points not imaged or planned
        yet). A domain seen in an overview holds its walls on its outline: tiling its box
        images them at high magnification."""
        side = float(s["fov_m"])
        k = int(math.ceil(8.0 * side / self.high_fov_m)) + 1
        g = (np.linspace(0.0, 1.0, k) - 0.5) * side
        gx, gy = np.meshgrid(g, g)
        pts = np.asarray(s["center_m"], float) + np.stack([gx.ravel(), gy.ravel()], axis=1)
        inside = ((pts >= 0.0) & (pts <= self.scope.side_m)).all(axis=1)
        out = self._tiles(pts[inside], None)
        for v in out:
            v["kind"], v["reason"] = "suggestion", s.get("reason")
        return out

    def _extra_suggestions(self, seq: int, has_walls: bool) -> list[dict]:
        """Frame ``seq``'s suggestions (its regions, else its released scans) other than the
        walls the tiles cover, not followed yet, with instrument coordinates; best first."""
        regions = self.regions_by_seq.get(seq) or self.scans_by_seq.get(seq, [])
        out = [s for s in regions if s.get("center_m") is not None
               and s.get("fov_m") is not None and str(s.get("id")) not in self._followed_set
               and not (has_walls and s.get("reason") == "wall")]
        return sorted(out, key=lambda s: -float(s.get("score", 0.0)))

    def _planned(self, p) -> bool:
        """Whether point ``p`` (m) lies in the useful part of a queued view."""
        x, y = float(p[0]), float(p[1])
        for v in self.queue:
            half = 0.5 * PLAN_FILL * float(v["fov_m"])
            if abs(x - v["center_m"][0]) <= half and abs(y - v["center_m"][1]) <= half:
                return True
        return False

    def _backlog(self, before: int) -> list[dict]:
        """Suggestions of frames before ``before``, not followed, view not yet imaged at high
        magnification, best score first."""
        out = []
        for q, regions in self.regions_by_seq.items():
            if q >= before:
                continue
            out += [s for s in regions if str(s.get("id")) not in self._followed_set
                    and s.get("center_m") is not None and s.get("fov_m") is not None
                    and not self._covered(s)]
        return sorted(out, key=lambda s: -float(s.get("score", 0.0)))

    def _covered(self, s: dict) -> bool:
        """Whether a suggested view (the square ``center_m`` +- ``fov_m`` / 2) lies inside
        a high-magnification view already taken."""
        x, y = (float(c) for c in s["center_m"])
        r = 0.5 * float(s["fov_m"])
        for cx, cy, half in self._zoomed:
            if abs(x - cx) + r <= half * 1.05 and abs(y - cy) + r <= half * 1.05:
                return True
        return False

    def _take(self, s: dict, reason) -> dict:
        self.followed.append(str(s.get("id")))
        self._followed_set.add(str(s.get("id")))
        return {"kind": "suggestion", "id": s.get("id"),
                "center_m": [float(c) for c in s["center_m"]], "fov_m": float(s["fov_m"]),
                "rotation_rad": float(s.get("rotation_rad") or 0.0), "reason": reason}

    def _approve_best(self, pending: list[dict]) -> dict | None:
        for s in sorted(pending, key=lambda s: -float(s.get("score", 0.0))):
            if str(s.get("id")) in self._followed_set or s.get("center_m") is None \
                    or s.get("fov_m") is None or self._covered(s):
                continue
            reply = self.control.call("approve", id=s["id"])
            if not reply.get("ok"):
                self._followed_set.add(str(s.get("id")))  # expired or decided: not again
                continue
            scan = reply.get("scan") or s
            view = self._take({**s, **{k: scan[k] for k in ("center_m", "fov_m",
                                                           "rotation_rad") if k in scan}},
                              s.get("reason"))
            view["fov_m"] = min(view["fov_m"], self.high_fov_m)  # image it zoomed
            return view
        return None

    def _cell_centre(self, k: int) -> list[float]:
        n = self.scope.config.fovs
        k %= n * n
        f = self.scope.base_fov_m
        return [(k % n + 0.5) * f, (k // n + 0.5) * f]

    def _survey(self) -> dict:
        """The next survey position: ``survey_fov_factor`` x the base field of view, on a
        grid of equal steps tiling the sample (row by row); positions whose whole field was
        imaged at high magnification are passed over."""
        side = self.scope.side_m
        fov = min(self.survey_fov_factor * self.scope.base_fov_m, side)
        n = max(1, int(math.ceil(side / fov - 1e-9)))
        pitch = (side - fov) / (n - 1) if n > 1 else 0.0
        for _ in range(n * n):
            k = self._raster % (n * n)
            self._raster += 1
            c = [0.5 * fov + (k % n) * pitch, 0.5 * fov + (k // n) * pitch]
            if n > 1 and self._covered({"center_m": c, "fov_m": fov}):
                continue
            break
        return {"kind": "survey", "id": None, "center_m": c, "fov_m": fov,
                "rotation_rad": 0.0, "reason": None}

    def _raster_quadrant(self) -> dict:
        cell, quad = divmod(self._raster, 4)
        self._raster += 1
        cx, cy = self._cell_centre(cell)
        q = 0.25 * self.scope.base_fov_m
        return {"kind": "raster", "id": None,
                "center_m": [cx + (q if quad % 2 else -q), cy + (q if quad >= 2 else -q)],
                "fov_m": 0.5 * self.scope.base_fov_m, "rotation_rad": 0.0, "reason": None}

    def _random(self) -> dict:
        mag = float(self.rng.choice([1.0, 2.0, 4.0]))
        fov = self.scope.base_fov_m / mag
        lo, hi = 0.5 * fov, self.scope.side_m - 0.5 * fov
        c = self.rng.uniform(lo, hi, 2) if hi > lo else np.full(2, 0.5 * self.scope.side_m)
        return {"kind": "random", "id": None, "center_m": [float(c[0]), float(c[1])],
                "fov_m": fov, "rotation_rad": 0.0, "reason": None}

    def first_view(self) -> dict:
        """The view of the first frame: the strategy's first position."""
        view = self._survey() if self.strategy == "rewardscope" else self.next_view(-1)
        self.last = view
        view["set"] = self.scope.scan(view["center_m"], view["fov_m"], view["rotation_rad"])
        self._book(view["set"])
        self._current = view["set"]
        return view

    def close(self) -> None:
        if self.results is not None:
            self.results.close()
        if self.control is not None:
            self.control.close()


def magnification_of(view: dict, base_fov_m: float) -> float:
    """Zoom of a view relative to the base field of view (>= 0)."""
    fov = view.get("fov_m")
    return base_fov_m / fov if fov and math.isfinite(fov) and fov > 0 else math.nan
