"""A small scan controller: listens to the service's suggestions and steers a microscope.

The controller subscribes to the results socket for ``[b"result", ...]``, ``[b"regions", ...]``
and ``[b"scan", ...]`` messages (docs/PROTOCOL.md) and decides where the next frame is taken.
The microscope is anything with ``scan(center_m, fov_m, rotation_rad)`` (the digital twin,
:class:`rewardscope.simulators.twin.Twin`, in-process); the controller never touches the
service's internals, only its sockets.

Strategies (one frame budget for all):

``rewardscope``
    follow the service: in ``auto`` mode the released ``scan`` of the frame; in ``approve``
    mode the top pending suggestion of the frame's ``regions``, approved over the control
    socket (``approve`` -> the scan it releases). A suggested view that lies inside a view
    already imaged at high magnification is skipped (nothing new to see). With nothing to
    follow for the frame: the best suggestion of earlier frames not followed yet, then the
    next raster position at the base magnification (a survey step).
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
    """

    def __init__(self, scope, results_url: str | None = None, *, strategy: str = "rewardscope",
                 control_url: str | None = None, approve: bool = False, seed: int = 0,
                 context: zmq.Context | None = None) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if approve and control_url is None:
            raise ValueError("approve mode needs control_url")
        if strategy == "rewardscope" and results_url is None:
            raise ValueError("the rewardscope strategy needs the service's results_url")
        self.scope, self.strategy, self.approve = scope, strategy, approve
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
        view = self.next_view(seq)
        view["set"] = self.scope.scan(view["center_m"], view["fov_m"], view["rotation_rad"])
        self._book(view["set"])
        return view

    def _book(self, actual: dict) -> None:
        """Remember a zoomed view (as an axis-aligned square around its centre)."""
        if actual["magnification"] >= HIGH_MAG:
            half = 0.5 * actual["fov_m"] * (abs(math.cos(actual["rotation_rad"]))
                                            + abs(math.sin(actual["rotation_rad"])))
            self._zoomed.append((actual["center_m"][0], actual["center_m"][1], half))

    def _follow(self, seq: int) -> dict | None:
        """The frame's released scan (auto) or its best approvable suggestion (approve);
        else the best suggestion of earlier frames not followed yet whose view no
        high-magnification view has covered (the service ranks several per frame but
        releases one)."""
        if self.approve:
            return self._approve_best(self.regions_by_seq.get(seq, [])) or \
                self._approve_best(self._backlog(seq))
        for scan in self.scans_by_seq.get(seq, []):
            if scan.get("center_m") is None or scan.get("fov_m") is None:
                continue  # a frame without pixel size: no instrument coordinates
            if self._covered(scan):
                self.skipped.append(str(scan.get("id")))
                continue  # inside a view already imaged at high magnification
            return self._take(scan, scan.get("reason"))
        for s in self._backlog(seq + 1):
            return self._take(s, s.get("reason"))
        return None

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
            return self._take({**s, **{k: scan[k] for k in ("center_m", "fov_m",
                                                           "rotation_rad") if k in scan}},
                              s.get("reason"))
        return None

    def _cell_centre(self, k: int) -> list[float]:
        n = self.scope.config.fovs
        k %= n * n
        f = self.scope.base_fov_m
        return [(k % n + 0.5) * f, (k // n + 0.5) * f]

    def _survey(self) -> dict:
        c = self._cell_centre(self._raster)
        self._raster += 1
        return {"kind": "survey", "id": None, "center_m": c, "fov_m": self.scope.base_fov_m,
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
