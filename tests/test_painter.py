"""analyze's picture process: draws in a second process, falls back to drawing here."""

from __future__ import annotations

import numpy as np

from rewardscope.cli.painter import Painter
from rewardscope.engine.analysis import Analysis

PNG = b"\x89PNG\r\n\x1a\n"


def _analysis() -> Analysis:
    rng = np.random.default_rng(0)
    atoms = rng.uniform(4, 60, size=(40, 2)).astype(np.float32)
    front = [{"workflow": "atoms", "params": {"threshold": t},
              "rewards": {"count_quality": t, "implausible_neighbours": 1.0 - t}}
             for t in (0.1, 0.3, 0.6)]
    yy, xx = np.mgrid[0:64, 0:64]
    return Analysis(atoms=atoms, labels=(np.arange(40) % 3 - 1).astype(np.int16),
                    walls=[[0.0, 32.0, 63.0, 30.0]], pareto=front,
                    params={"atoms": front[1]["params"]},
                    arrays={"amorphous_mask": (xx - 48) ** 2 + (yy - 48) ** 2 < 100})


def _jobs(tmp_path, analysis):
    image = np.random.default_rng(1).random((64, 64)).astype(np.float32)
    return [("overlay", (image, analysis, tmp_path / "overlay.png")),
            ("pareto", (analysis, tmp_path / "pareto.png"))]


def test_painter_draws_every_picture_in_its_own_process(tmp_path):
    with Painter(parallel=True) as painter:
        pid = painter.proc_.pid
        assert painter.draw(_jobs(tmp_path, _analysis())) is None
    for name in ("overlay.png", "pareto.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
    assert pid > 0 and painter.proc_ is None  # handed over and finished


def test_a_dead_painter_costs_nothing_but_time(tmp_path):
    """The picture process died before the hand-over: the pictures are drawn here and the
    reason is returned for the log."""
    painter = Painter()
    painter.proc_.kill()
    painter.proc_.wait()
    why = painter.draw(_jobs(tmp_path, _analysis()))
    assert why and "picture process" in why
    for name in ("overlay.png", "pareto.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG


def test_a_failing_job_is_reported_and_redrawn_here(tmp_path):
    """A picture the painter cannot draw (an unwritable path there and here) fails loudly
    after the painter said why, rather than leaving a silent gap."""
    bad = [("pareto", (_analysis(), tmp_path / "missing-dir" / "pareto.png"))]
    painter = Painter(parallel=False)
    try:
        painter.draw(bad)
    except (FileNotFoundError, OSError):
        pass
    else:  # pragma: no cover - the fallback must not swallow the error
        raise AssertionError("a picture that cannot be written must raise")
    assert painter.proc_ is None


def test_closing_an_unused_painter_stops_it():
    painter = Painter()
    proc = painter.proc_
    painter.close()
    assert proc.poll() is not None
    painter.close()  # idempotent
