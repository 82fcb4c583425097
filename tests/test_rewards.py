"""Built-in rewards on lattices and shapes with known answers, and the extensible registry."""

from __future__ import annotations

import dataclasses
import math
import textwrap

import numpy as np
import pytest

from rewardscope.science import rewards as R


def abo3_lattice(n: int, a: float, origin: float = 0.0) -> np.ndarray:
    """ABO3 [001]: A columns at the cell corners, B(-O) columns at the centres."""
    i, j = np.meshgrid(np.arange(n), np.arange(n))
    a_sites = np.c_[i.ravel(), j.ravel()] * a + origin
    return np.r_[a_sites, a_sites + a / 2].astype(np.float64)


def arc(r: float, n: int, span: float) -> np.ndarray:
    t = np.linspace(0.0, span, n)
    return np.c_[100 + r * np.cos(t), 100 + r * np.sin(t)]


def disk_mask(r: float, size: int, centre: tuple[float, float]) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= r * r


# --- registry -------------------------------------------------------------------------------

BUILT_INS = {
    "count_quality": "min",
    "implausible_neighbours": "min",
    "wall_curvature": "min",
    "wall_length_per_segment": "max",
    "wall_straightness": "max",
    "region_compactness": "max",
    "normalised_perimeter": "min",
    "gmm_bic": "min",
    "cluster_separation": "max",
}


def test_built_ins_are_registered_with_metadata() -> None:
    for name, direction in BUILT_INS.items():
        reward = R.get_reward(name)
        assert reward is R.REGISTRY[name]
        assert reward.name == name and reward.direction == direction
        assert reward.meaning and "\n" not in reward.meaning
        assert callable(reward.func) and reward.scale >= 0
        assert reward in R.BUILTIN  # declared once, in the registry table
    with pytest.raises(dataclasses.FrozenInstanceError):
        R.REGISTRY["count_quality"].direction = "max"


def test_reward_validates_direction_and_names_are_unique() -> None:
    with pytest.raises(ValueError, match="direction"):
        R.Reward("x", "up", "meaning", lambda: 0.0)
    with pytest.raises(ValueError, match="already registered"):
        R.register("count_quality", "min", "clash")(lambda: 0.0)


def test_to_minimisation() -> None:
    lo, hi = R.get_reward("count_quality"), R.get_reward("wall_straightness")
    assert R.to_minimisation(lo, 0.25) == 0.25
    assert R.to_minimisation(hi, 0.25) == -0.25
    # one rule: NaN and any infinity are a failed candidate, +inf in every objective
    for r, v in ((lo, math.inf), (lo, math.nan), (hi, -math.inf), (hi, math.inf), (hi, math.nan)):
        assert R.to_minimisation(r, v) == math.inf
    np.testing.assert_array_equal(R.objective_vector([lo, hi], {"count_quality": 0.1}),
                                  [0.1, math.inf])  # a missing reward is a failure too


def test_evaluate_picks_arguments_from_context() -> None:
    context = {"n_found": 200, "shape": (100, 100), "lattice_px": 10.0, "walls": []}
    assert R.evaluate(R.get_reward("count_quality"), context) == 0.0
    with pytest.raises(KeyError, match="segments"):
        R.evaluate(R.get_reward("wall_length_per_segment"), context)


USER_MODULE = '''
import functools

from rewardscope.science.rewards import Reward, register


@register("test_user_registered", "max", "registered through the decorator")
def registered(xy):
    return float(len(xy))


def plain(xy):
    """Number of atoms, declared by attribute."""
    return float(len(xy))


plain.direction = "min"


@functools.wraps(plain)
def wrapped(xy):
    return plain(xy) * 2


def undeclared(xy):
    return 0.0


as_object = Reward("as_object", "max", "a Reward instance", lambda xy: 1.0)


class Holder:
    @staticmethod
    def nested(xy):
        return 3.0


Holder.nested.direction = "max"
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch) -> str:
    pkg = tmp_path / "userpkg_rs"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "rewards.py").write_text(textwrap.dedent(USER_MODULE))
    (pkg / "broken.py").write_text("import a_module_that_does_not_exist_rs\n")
    (pkg / "raises.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "userpkg_rs.rewards"
    R.REGISTRY.pop("test_user_registered", None)


def test_user_rewards_load_by_dotted_path(user_module: str) -> None:
    xy = np.zeros((5, 2))
    reg = R.get_reward(f"{user_module}:registered")
    assert (reg.name, reg.direction, reg(xy)) == ("test_user_registered", "max", 5.0)
    assert R.get_reward("test_user_registered") is reg  # registered on import

    plain = R.get_reward(f"{user_module}.plain")  # dots only works too
    assert plain.direction == "min" and plain.name == f"{user_module}.plain"
    assert plain.meaning == "Number of atoms, declared by attribute."

    wrapped = R.get_reward(f"{user_module}:wrapped")  # direction found through __wrapped__
    assert wrapped.direction == "min" and wrapped(xy) == 10.0

    assert R.get_reward(f"{user_module}:as_object").name == "as_object"
    nested = R.get_reward(f"{user_module}:Holder.nested")
    assert nested.direction == "max" and nested(xy) == 3.0
    assert R.to_minimisation(nested, nested(xy)) == -3.0


def test_bad_paths_give_clear_errors(user_module: str) -> None:
    with pytest.raises(R.RewardLookupError, match="unknown reward 'nope'.*count_quality"):
        R.get_reward("nope")
    with pytest.raises(R.RewardLookupError, match="'no_such_pkg_rs.mod:f'"):
        R.get_reward("no_such_pkg_rs.mod:f")
    with pytest.raises(R.RewardLookupError, match="no_such_pkg_rs.mod.f"):
        R.get_reward("no_such_pkg_rs.mod.f")
    with pytest.raises(R.RewardLookupError, match="has no attribute 'missing'"):
        R.get_reward(f"{user_module}:missing")
    with pytest.raises(R.RewardLookupError, match="must declare direction"):
        R.get_reward(f"{user_module}:undeclared")
    with pytest.raises(R.RewardLookupError, match="a_module_that_does_not_exist_rs"):
        R.get_reward("userpkg_rs.broken:f")
    with pytest.raises(R.RewardLookupError, match="boom at import"):
        R.get_reward("userpkg_rs.raises:f")
    with pytest.raises(R.RewardLookupError, match="non-empty"):
        R.get_reward("")


# --- atoms ----------------------------------------------------------------------------------


def test_count_quality_exact_on_perfect_lattice() -> None:
    a, n = 12.0, 15
    xy = abo3_lattice(n, a)
    shape = (int(n * a), int(n * a))
    assert R.count_quality(len(xy), shape, a) == 0.0
    assert R.count_quality(len(xy) // 2, shape, a) == pytest.approx(0.5)  # only A found
    assert R.count_quality(len(xy) // 2, shape, a, sites_per_cell=1) == 0.0
    assert R.count_quality(0, shape, a) == 1.0
    assert R.count_quality(3 * len(xy), shape, a) == pytest.approx(2.0)


def test_count_quality_validates() -> None:
    with pytest.raises(ValueError, match="n_found"):
        R.count_quality(-1, (10, 10), 2.0)
    with pytest.raises(ValueError, match="lattice_px"):
        R.count_quality(5, (10, 10), 0.0)
    with pytest.raises(ValueError, match="shape"):
        R.count_quality(5, (10,), 2.0)


def test_implausible_neighbours_perfect_lattice_is_zero() -> None:
    a, n = 16.0, 14
    xy = abo3_lattice(n, a, origin=4.0)
    shape = (int(n * a), int(n * a))
    assert R.implausible_neighbours(xy, shape, a) == 0.0
    jitter = np.random.default_rng(0).normal(0, 0.1 * a / np.sqrt(2), xy.shape)
    assert R.implausible_neighbours(xy + jitter, shape, a) == 0.0
    a_only = xy[: n * n]  # B columns missed: sparse, but nothing is crowded
    assert R.implausible_neighbours(a_only, shape, a) == 0.0


def interior(xy: np.ndarray, shape: tuple[int, int], a: float) -> np.ndarray:
    return (xy.min(axis=1) >= a) & (xy[:, 0] <= shape[1] - 1 - a) & (xy[:, 1] <= shape[0] - 1 - a)


@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_implausible_neighbours_counts_double_detections(offset: float) -> None:
    a, n = 16.0, 14
    xy = abo3_lattice(n, a, origin=4.0)
    shape = (int(n * a), int(n * a))
    inner = np.flatnonzero(interior(xy, shape, 2 * a))[::5]
    doubled = np.r_[xy, xy[inner] + [offset, 0.0]]
    n_judged = int(interior(doubled, shape, a).sum())
    want = 2 * len(inner) / n_judged  # both the column and its twin are flagged
    assert R.implausible_neighbours(doubled, shape, a) == pytest.approx(want)
    # The paper-style 0.5 limit lets isolated twins through (their sum is 0.75 of ideal).
    assert R.implausible_neighbours(doubled, shape, a, fraction=0.5) == 0.0


def test_implausible_neighbours_ignores_border_and_empty() -> None:
    a, n = 16.0, 10
    xy = abo3_lattice(n, a, origin=4.0)
    shape = (int(n * a), int(n * a))
    corner = np.r_[xy, [[4.0, 4.0], [4.5, 4.0]]]  # twins within one spacing of the border
    assert R.implausible_neighbours(corner, shape, a) == 0.0
    assert R.implausible_neighbours(np.zeros((0, 2)), shape, a) == 1.0
    assert R.implausible_neighbours(xy[:4], shape, a) == 1.0  # fewer than k + 1 atoms
    assert R.implausible_neighbours([[1.0, 1.0]] * 6, shape, a) == 1.0  # none in the interior
    with pytest.raises(ValueError, match="xy"):
        R.implausible_neighbours(np.zeros((6, 3)), shape, a)


# --- walls ----------------------------------------------------------------------------------


def test_wall_curvature() -> None:
    straight = [np.c_[np.linspace(0, 100, 30), np.full(30, 5.0)], np.c_[[0, 50], [0, 80]]]
    assert R.wall_curvature(straight) == pytest.approx(0.0, abs=1e-12)
    for r in (25.0, 60.0):
        assert R.wall_curvature([arc(r, 200, np.pi)]) == pytest.approx(1 / r, rel=0.05)
    two = R.wall_curvature([arc(25.0, 200, np.pi), arc(50.0, 200, np.pi)])
    # Arc-length weighting: (L1/25 + L2/50) / (L1 + L2) with L2 = 2 L1.
    assert two == pytest.approx((1 / 25 + 2 / 50) / 3, rel=0.05)
    stubs = [np.array([[0.0, 0.0], [3.0, 0.0]])]
    assert R.wall_curvature(stubs) == math.inf  # too short to measure: skipped
    assert R.wall_curvature([]) == math.inf
    with pytest.raises(ValueError, match="list of"):
        R.wall_curvature(np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"walls\[0\]"):
        R.wall_curvature([np.zeros((4, 4))])


def test_wall_length_per_segment() -> None:
    seg = np.array([[0, 0, 3, 4], [0, 0, 0, 10], [1, 1, 1, 1]], dtype=float)
    assert R.wall_length_per_segment(seg) == pytest.approx(5.0)
    assert R.wall_length_per_segment(np.zeros((0, 4))) == 0.0
    assert R.wall_length_per_segment([]) == 0.0


def test_wall_straightness() -> None:
    line = np.c_[np.linspace(0, 100, 20), np.linspace(0, 30, 20)]
    assert R.wall_straightness([line]) == pytest.approx(1.0)
    semi = arc(30.0, 2000, np.pi)
    assert R.wall_straightness([semi]) == pytest.approx(2 / np.pi, rel=1e-4)
    # Weighted by arc length: a 100 px line and a 30*pi px semicircle.
    want = (100 * 1.0 + 30 * np.pi * 2 / np.pi) / (100 + 30 * np.pi)
    short = np.c_[np.linspace(0, 100, 5), np.zeros(5)]
    assert R.wall_straightness([short, semi]) == pytest.approx(want, rel=1e-4)
    assert R.wall_straightness([]) == 0.0
    assert R.wall_straightness([np.ones((3, 2))]) == 0.0


# --- regions --------------------------------------------------------------------------------


def test_region_compactness() -> None:
    assert R.region_compactness(disk_mask(30, 100, (50, 50))) == pytest.approx(1.0, abs=0.05)
    square = np.zeros((60, 60), dtype=bool)
    square[10:50, 10:50] = True
    assert 0.85 < R.region_compactness(square) < 0.92  # pi/4 with the Crofton square at 0.94
    strip = np.zeros((60, 60), dtype=bool)
    strip[10:12, 5:55] = True
    assert R.region_compactness(strip) < 0.3
    both = disk_mask(20, 120, (40, 40)) | np.pad(strip, ((60, 0), (60, 0)))
    a_disk, a_strip = disk_mask(20, 120, (40, 40)).sum(), strip.sum()
    want = (
        a_disk * R.region_compactness(disk_mask(20, 120, (40, 40)))
        + a_strip * R.region_compactness(strip)
    ) / (a_disk + a_strip)  # noqa: E501
    assert R.region_compactness(both) == pytest.approx(want)
    speck = np.zeros((10, 10), dtype=bool)
    speck[5, 5] = True
    assert R.region_compactness(speck) == 1.0  # clipped
    assert R.region_compactness(speck, min_area=2) == 0.0
    assert R.region_compactness(np.zeros((10, 10), dtype=bool)) == 0.0


def test_normalised_perimeter() -> None:
    assert R.normalised_perimeter(disk_mask(30, 100, (50, 50))) == pytest.approx(1.0, abs=0.03)
    four = np.zeros((200, 200), dtype=bool)
    for cy in (50, 150):
        for cx in (50, 150):
            four |= disk_mask(30, 200, (cy, cx))
    assert R.normalised_perimeter(four) == pytest.approx(2.0, rel=0.03)  # sqrt(4) disks
    assert R.normalised_perimeter(np.zeros((10, 10), dtype=bool)) == math.inf
    with pytest.raises(ValueError, match="2-D"):
        R.normalised_perimeter(np.zeros(10))


# --- clustering -----------------------------------------------------------------------------


def test_pass_through_rewards() -> None:
    assert R.gmm_bic(-1234.5) == -1234.5
    assert R.gmm_bic(-1000.0, n_samples=100) == -10.0
    assert R.gmm_bic(math.nan) == math.inf
    assert R.cluster_separation(0.4) == 0.4
    assert R.cluster_separation(math.nan) == -1.0
