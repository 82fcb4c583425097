"""rewardscope's search-space dimensions against scikit-optimize's, value for value.

The optimizer's arithmetic on dimensions (transform, inverse transform, sizes, bounds) must be
skopt's exactly: the same points, snapped and decoded the same way, give the same searches.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from fresh import run_fresh
from skopt import space as sk

from rewardscope.science import dimensions as ours


def _typed(values) -> list:
    """Values with their types, so 3 and 3.0, or str and numpy str, are told apart."""
    return [(type(v), v) for v in np.asarray(values, dtype=object).ravel().tolist()] \
        if isinstance(values, np.ndarray) else [(type(v), v) for v in values]


SPECS = [
    ("Real", (0.0, 1.0), {}),
    ("Real", (0.3, 0.99), {}),
    ("Real", (1e-3, 10.0), {"prior": "log-uniform"}),
    ("Real", (0.5, 4.0), {"prior": "log-uniform", "base": 2}),
    ("Real", (-2.0, 3.0), {"dtype": np.float32}),
    ("Integer", (2, 12), {}),
    ("Integer", (-5, 7), {}),
    ("Integer", (1, 2), {}),
    ("Integer", (0, 1000), {}),
    ("Integer", (2, 200), {"prior": "log-uniform"}),
    ("Integer", (3, 6), {"dtype": int}),
    ("Categorical", (["full", "tied", "diag", "spherical"],), {}),
    ("Categorical", (["a", "b"],), {}),
    ("Categorical", ([True, False],), {}),
    ("Categorical", ([8, 16, 32],), {}),
    ("Categorical", ([0.25, 0.5],), {}),
    ("Categorical", (["only"],), {}),
    ("Categorical", (["no", "yes"],), {"prior": [0.25, 0.75]}),
]


def _pair(kind: str, args: tuple, kw: dict, transform: str):
    return (getattr(ours, kind)(*args, transform=transform, name="p", **kw),
            getattr(sk, kind)(*args, transform=transform, name="p", **kw))


def _transforms(kind: str) -> list[str]:
    return (["identity", "normalize"] if kind != "Categorical"
            else ["onehot", "normalize", "label", "identity"])


def _unit_points(size: int, rng) -> np.ndarray:
    """Transformed inputs: random, a fine grid, the ends, 0.5 and its neighbours."""
    x = np.concatenate([rng.random(500), np.linspace(0, 1, 401),
                        [0.0, 1.0, 0.5, np.nextafter(0.5, 0), np.nextafter(0.5, 1)]])
    if size == 1:
        return x
    return np.stack([np.roll(x, k) for k in range(size)], axis=1)


@pytest.mark.parametrize(("kind", "args", "kw"), SPECS)
def test_each_dimension_is_skopts(kind, args, kw):
    rng = np.random.default_rng(0)
    for transform in _transforms(kind):
        mine, ref = _pair(kind, args, kw, transform)
        assert mine.transformed_size == ref.transformed_size
        assert mine.bounds == ref.bounds
        assert np.array_equal(np.asarray(mine.transformed_bounds, dtype=float),
                              np.asarray(ref.transformed_bounds, dtype=float))
        assert mine.is_constant == ref.is_constant
        values = ref.rvs(300, random_state=1)
        np.testing.assert_array_equal(np.asarray(mine.transform(values)),
                                      np.asarray(ref.transform(values)))
        assert np.asarray(mine.transform(values)).dtype == np.asarray(ref.transform(values)).dtype
        assert _typed(mine.rvs(20, random_state=4)) == _typed(ref.rvs(20, random_state=4))
        if transform == "identity" and kind != "Categorical":
            xt = ref.transform(values)
        elif transform in ("identity", "label"):
            xt = ref.transform(values)
        else:
            xt = _unit_points(mine.transformed_size, rng)
        assert _typed(mine.inverse_transform(xt)) == _typed(ref.inverse_transform(xt))


def test_space_is_skopts_on_mixed_points():
    dims = [ours.Real(0, 1, name="a"), ours.Categorical(["x", "y"], name="b"),
            ours.Categorical(["p", "q", "r"], name="c"), ours.Integer(2, 12, name="d"),
            ours.Real(1e-3, 1.0, prior="log-uniform", name="e"),
            ours.Categorical([True, False], name="f"),
            ours.Integer(1, 64, prior="log-uniform", name="g")]
    refs = [d.skopt() for d in dims]
    for transform in (None, "normalize"):
        mine, ref = ours.Space(copy.deepcopy(dims)), sk.Space(copy.deepcopy(refs))
        if transform:
            mine.set_transformer(transform)
            ref.set_transformer(transform)
        pts = ref.rvs(200, random_state=3)
        assert ([_typed(p) for p in mine.rvs(200, random_state=3)]
                == [_typed(p) for p in pts])
        np.testing.assert_array_equal(mine.transform(pts), ref.transform(pts))
        assert mine.transformed_n_dims == ref.transformed_n_dims
        assert mine.n_dims == ref.n_dims
        assert mine.dimension_names == ref.dimension_names
        assert all((p in mine) == (p in ref) for p in pts[:20])
        assert ([1e9] * mine.n_dims in mine) == ([1e9] * ref.n_dims in ref) is False
        z = np.random.default_rng(5).random((200, ref.transformed_n_dims))
        assert ([_typed(p) for p in mine.inverse_transform(z)]
                == [_typed(p) for p in ref.inverse_transform(z)])


def test_skopt_dimensions_and_shorthand_are_converted():
    """A workflow may declare skopt's classes or skopt's shorthand; the space holds ours."""
    space = ours.Space([sk.Real(1e-3, 1.0, prior="log-uniform", name="t"),
                        sk.Integer(2, 9, name="k"), sk.Categorical(["a", "b", "c"], name="c"),
                        (0.5, 2.5), ["u", "v"]])
    kinds = [type(d) for d in space.dimensions]
    assert kinds == [ours.Real, ours.Integer, ours.Categorical, ours.Real, ours.Categorical]
    assert space.dimensions[0].prior == "log-uniform" and space.dimensions[0].name == "t"
    ref = sk.Space([sk.Real(1e-3, 1.0, prior="log-uniform"), sk.Integer(2, 9),
                    sk.Categorical(["a", "b", "c"]), (0.5, 2.5), ["u", "v"]])
    pts = ref.rvs(50, random_state=0)
    np.testing.assert_array_equal(space.transform(pts), ref.transform(pts))


def test_bad_declarations_name_the_problem():
    with pytest.raises(ValueError, match="lower bound"):
        ours.Real(2.0, 1.0)
    with pytest.raises(ValueError, match="prior"):
        ours.Integer(1, 4, prior="normal")
    with pytest.raises(ValueError, match="contain 0"):
        ours.Real(0.0, 1.0, prior="log-uniform")
    with pytest.raises(ValueError, match="transform"):
        ours.Categorical(["a", "b"], transform="spline")
    with pytest.raises(ValueError, match="less than 1.0"):
        ours.Real(0, 1, transform="normalize").inverse_transform([1.5])
    with pytest.raises(ValueError, match="name"):
        ours.Real(0, 1, name=3)


def test_the_optimizer_and_workflows_load_without_skopt_or_scikit_learn():
    """A fresh interpreter: the dimensions, the optimizer and the built-in workflows import
    neither skopt, scikit-learn nor scipy.stats (~0.5 s of a cold analyze)."""
    out = run_fresh(
        "from rewardscope.science import dimensions\n"
        "import rewardscope.optimize.mobo as mobo\n"
        "import rewardscope.workflows.atoms, rewardscope.workflows.domains\n"
        "import rewardscope.workflows.amorphous\n"
        "opt = mobo.MultiObjectiveOptimizer([dimensions.Real(0, 1, name='a'),"
        " dimensions.Integer(2, 9, name='b'), dimensions.Categorical(['x', 'y', 'z'],"
        " name='c')], 2, seed=0)\n"
        "xs = opt.ask(4)\n"
        "opt.tell(xs, [[float(i), 3.0 - i] for i in range(4)])\n"
        "opt.ask(2)\n"
        "print('ok')\n")
    assert out.strip() == "ok"
