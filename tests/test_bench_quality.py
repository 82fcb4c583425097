"""The quality table's own arithmetic (``benchmarks/bench_quality.py``) and its registration."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from rewardscope import cli
from rewardscope.engine.analysis import Analysis

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bq():
    spec = importlib.util.spec_from_file_location("bench_quality",
                                                  ROOT / "benchmarks" / "bench_quality.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


def _square(a: float, deg: float) -> dict:
    th = math.radians(deg)
    return {"a": [a * math.cos(th), a * math.sin(th)], "b": [-a * math.sin(th), a * math.cos(th)]}


def test_lattice_error_ignores_the_choice_of_cell_vectors(bq):
    truth = _square(15.0, 17.0)
    a, b = np.array(truth["a"]), np.array(truth["b"])
    for other in ({"a": b.tolist(), "b": (-a).tolist()},  # swapped, sign flipped
                  {"a": a.tolist(), "b": (b + 2 * a).tolist()}):  # same lattice, sheared basis
        assert bq.lattice_error_pct(other, truth) == pytest.approx(0.0, abs=1e-9)
    assert bq.lattice_error_pct(_square(15.3, 17.0), truth) == pytest.approx(2.0)
    # The centred-square sublattice of all columns (a / sqrt 2 at 45 deg) is a wrong answer.
    assert bq.lattice_error_pct(_square(15.0 / math.sqrt(2), 62.0), truth) > 25.0


def test_polarization_accuracy_reads_cells_and_truth_directions(bq):
    truth_dirs = np.array([[1.0, 1.0], [-1.0, -1.0]]) / math.sqrt(2)
    atoms = np.array([[10.0, 10.0], [50.0, 10.0]])
    case = bq.Case("t", [np.zeros((8, 8))], atoms, _square(12.0, 0.0), 12.0,
                   domain=np.array([0, 1]), polarization=truth_dirs)
    cells = np.array([[11.0, 9.0], [49.0, 11.0], [12.0, 12.0]])
    pol = np.array([[1.0, 0.2], [1.0, 1.0], [0.0, 0.0]])  # right, wrong, no vector
    a = Analysis(atoms=atoms.astype(np.float32), labels=np.zeros(2, np.int16),
                 arrays={"polarization": pol, "cells": cells})
    assert bq.polarization_accuracy_pct(a, case) == pytest.approx(100.0 / 3)
    assert bq.polarization_accuracy_pct(Analysis(atoms=a.atoms, labels=a.labels), case) is None
    empty = Analysis(atoms=a.atoms, labels=a.labels,
                     arrays={"polarization": np.zeros((0, 2)), "cells": np.zeros((0, 2))})
    assert math.isnan(bq.polarization_accuracy_pct(empty, case))


def test_bench_command_passes_options_to_the_benchmark(capfd):
    assert cli.main(["bench", "quality", "--", "--help"]) == 0
    out = capfd.readouterr().out
    assert "== bench_quality ==" in out and "--quick" in out and "--hint" in out
