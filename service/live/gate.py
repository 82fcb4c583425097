"""The approval gate between recommended regions and the instrument.

Each frame's ranked suggestions (``Analysis.regions``) are offered to the gate by the I/O thread
after the frame's result went out. What happens next depends on the live setting
``regions_mode``:

* ``auto``: the top suggestion whose box lies inside the sample is released at once (a scan);
  the others were only published.
* ``approve``: every suggestion waits here until an operator approves it (-> a scan) or rejects
  it (-> dropped, never a scan), or until it expires after ``regions_expiry_s`` seconds. Nobody
  approving costs nothing: pending suggestions expire, frames keep being answered.
* ``off``: nothing is published or kept.

The gate is plain bookkeeping with no sockets, locks or threads: the daemon's I/O thread is its
only user, which also serialises control commands against new offers. Times are monotonic
seconds (``time.monotonic``), passed in so that tests decide what "later" means.

A decision on an id that is not pending is refused with a named code and changes nothing:
``unknown_suggestion`` (never seen, or already approved/rejected/released),
``expired_suggestion`` (it was pending and expired), ``outside_sample`` (its box lies outside the
frame it came from, or outside the configured sample extent).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from rewardscope import protocol

MODES = ("auto", "approve", "off")


class GateError(Exception):
    """A refused decision; ``code`` is one of :data:`protocol.CONTROL_ERROR_CODES`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class Pending:
    """One suggestion the gate knows about: where it came from and when it expires.

    ``offered`` and ``expires`` are monotonic seconds; ``frame_shape`` (rows, cols) px.
    """

    session: str
    seq: int
    suggestion: dict
    offered: float
    expires: float
    frame_shape: tuple[int, int] | None = None

    @property
    def id(self) -> str:
        return self.suggestion["id"]

    @property
    def reason(self) -> str:
        return self.suggestion["reason"]

    def public(self, now: float) -> dict:
        """The suggestion as the ``suggestions`` reply lists it (plus session, seq, expiry s)."""
        return {**self.suggestion, "session": self.session, "seq": self.seq,
                "expires_in_s": round(max(0.0, self.expires - now), 3)}


@dataclass
class Offer:
    """What :meth:`Gate.offer` did with one frame's suggestions."""

    released: list[Pending] = field(default_factory=list)  # auto: sent as a scan now
    pending: list[Pending] = field(default_factory=list)  # approve: waiting
    outside: list[Pending] = field(default_factory=list)  # refused: box outside the sample
    expired: list[Pending] = field(default_factory=list)  # pushed out by max_pending


def inside_sample(p: Pending, extent_m: Sequence[float] | None = None) -> bool:
    """True when ``p``'s box lies within its frame (px) and within ``extent_m`` (m), if given.

    ``extent_m`` is [x0, y0, x1, y1] in instrument metres; it is checked against ``box_m`` when
    the suggestion has one (no pixel size: only the frame check applies).
    """
    box = p.suggestion["box_px"]
    if p.frame_shape is not None:
        rows, cols = p.frame_shape
        if not protocol.box_inside(box, (0.0, 0.0, float(cols), float(rows))):
            return False
    box_m = p.suggestion.get("box_m")
    return extent_m is None or box_m is None or protocol.box_inside(box_m, extent_m)


class Gate:
    """Pending suggestions of every session, with expiry and a memory of decisions.

    Parameters
    ----------
    max_pending : int
        Suggestions kept waiting at most, over all sessions; the oldest expire first beyond it.
    remember : int
        Decided ids remembered (so a late approve of a rejected id is refused by name).
    """

    def __init__(self, *, max_pending: int = 256, remember: int = 4096) -> None:
        self.max_pending = max_pending
        self.remember = remember
        self._pending: OrderedDict[str, Pending] = OrderedDict()  # oldest first
        self._decided: OrderedDict[str, str] = OrderedDict()  # id -> decision

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self._pending)

    def pending(self, session: str | None = None, now: float | None = None) -> list[dict]:
        """Pending suggestions (best score first), as plain data; ``session`` filters."""
        now = time.monotonic() if now is None else now
        items = [p for p in self._pending.values()
                 if (session is None or p.session == session) and p.expires > now]
        items.sort(key=lambda p: -p.suggestion["score"])
        return [p.public(now) for p in items]

    def decision(self, sid: str) -> str | None:
        """What became of ``sid``: ``pending``, ``released``, ``approved``, ``rejected``,
        ``expired``, ``outside_sample``, ``published`` (auto mode, not the top one), or None."""
        if sid in self._pending:
            return "pending"
        return self._decided.get(sid)

    # ------------------------------------------------------------------ offers
    def offer(self, session: str, seq: int, regions: Sequence[dict], *, mode: str,
              expiry_s: float, frame_shape: tuple[int, int] | None = None,
              extent_m: Sequence[float] | None = None, now: float | None = None) -> Offer:
        """Take one frame's suggestions (validated, best first) under ``mode``.

        Parameters
        ----------
        session, seq : str, int
            The frame they were made from.
        regions : sequence of dict
            Suggestions (contract fields, see :func:`protocol.check_suggestion`).
        mode : str
            One of :data:`MODES`.
        expiry_s : float
            Seconds a pending suggestion waits for a decision.
        frame_shape : (int, int), optional
            (rows, cols) px of the frame: boxes outside it are ``outside_sample``.
        extent_m : [x0, y0, x1, y1], optional
            Sample extent in instrument metres, checked against ``box_m``.
        now : float, optional
            Monotonic seconds (default ``time.monotonic()``).
        """
        if mode not in MODES:
            raise ValueError(f"regions mode must be one of {MODES}, got {mode!r}")
        now = time.monotonic() if now is None else now
        out = Offer()
        if mode == "off":
            return out
        items = [Pending(session, int(seq), protocol.check_suggestion(s), now, now + expiry_s,
                         frame_shape) for s in regions]
        items.sort(key=lambda p: -p.suggestion["score"])
        for p in items:
            if p.id in self._pending or p.id in self._decided:
                continue  # an id is offered once (uuid4: only a replayed message repeats)
            if not inside_sample(p, extent_m):
                out.outside.append(p)
                self._decide(p.id, "outside_sample")
            elif mode == "auto":
                if out.released:
                    self._decide(p.id, "published")
                else:
                    out.released.append(p)
                    self._decide(p.id, "released")
            else:
                self._pending[p.id] = p
                out.pending.append(p)
        while len(self._pending) > self.max_pending:
            _, old = self._pending.popitem(last=False)
            self._decide(old.id, "expired")
            out.expired.append(old)
        return out

    def expire(self, now: float | None = None) -> list[Pending]:
        """Drop the suggestions whose time ran out; returns them."""
        now = time.monotonic() if now is None else now
        gone = [p for p in self._pending.values() if p.expires <= now]
        for p in gone:
            del self._pending[p.id]
            self._decide(p.id, "expired")
        return gone

    # ------------------------------------------------------------------ decisions
    def _take(self, sid: str, now: float) -> Pending:
        """The pending suggestion ``sid``, or a GateError naming why it is not."""
        p = self._pending.get(sid)
        if p is None:
            done = self._decided.get(sid)
            if done == "expired":
                raise GateError("expired_suggestion", f"suggestion {sid} expired")
            if done == "outside_sample":
                raise GateError("outside_sample", f"suggestion {sid} lies outside the sample")
            if done is None:
                raise GateError("unknown_suggestion", f"no suggestion {sid}")
            raise GateError("unknown_suggestion", f"suggestion {sid} is not pending ({done})")
        if p.expires <= now:
            del self._pending[sid]
            self._decide(sid, "expired")
            raise GateError("expired_suggestion", f"suggestion {sid} expired")
        return p

    def approve(self, sid: str, *, extent_m: Sequence[float] | None = None,
                now: float | None = None) -> Pending:
        """Release pending ``sid`` (the caller sends its scan); GateError otherwise.

        A box outside the sample is refused (``outside_sample``) and stays pending.
        """
        now = time.monotonic() if now is None else now
        p = self._take(sid, now)
        if not inside_sample(p, extent_m):
            raise GateError("outside_sample", f"suggestion {sid} box {p.suggestion['box_px']} "
                            "lies outside the sample")
        del self._pending[sid]
        self._decide(sid, "approved")
        return p

    def reject(self, sid: str, *, now: float | None = None) -> Pending:
        """Drop pending ``sid`` for good: it is never released. GateError otherwise."""
        now = time.monotonic() if now is None else now
        p = self._take(sid, now)
        del self._pending[sid]
        self._decide(sid, "rejected")
        return p

    def _decide(self, sid: str, decision: str) -> None:
        self._decided[sid] = decision
        self._decided.move_to_end(sid)
        while len(self._decided) > self.remember:
            self._decided.popitem(last=False)
