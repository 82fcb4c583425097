"""The search-space dimensions workflows declare: scikit-optimize's ``Real``, ``Integer``,
``Categorical`` and ``Space``, loaded without scikit-optimize's package ``__init__``.

Why: ``import skopt`` (which any ``from skopt.space import ...`` runs first) imports every
optimizer, sampler, callback and searcher skopt has, and with them scikit-learn's
ensembles, trees, neighbours, linear models and model selection, joblib and loky: ~0.13 s of
a cold ``rewardscope analyze`` (~2.5 s), for classes rewardscope never uses (its optimizer
is :mod:`rewardscope.optimize.mobo`). ``skopt.space`` itself needs none of it (it imports
only its own ``transformers`` module, numpy, scipy.stats and scikit-learn's utilities), so it
is loaded here as the submodule it is, under a stand-in parent that is removed at once.

The classes are skopt's own (``skopt.space.Real is dimensions.Real``); a later ``import
skopt`` runs skopt's ``__init__`` as usual and finds this same ``skopt.space`` module, and a
``from skopt.space import Real`` after this module is imported reuses it without importing
the rest of skopt. Workflows may import their dimensions from either place.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types


def _load_space() -> types.ModuleType:
    if "skopt" in sys.modules or "skopt.space" in sys.modules:  # the real package is there
        return importlib.import_module("skopt.space")
    spec = importlib.util.find_spec("skopt")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("scikit-optimize is not installed (pip install scikit-optimize)")
    stand_in = types.ModuleType("skopt")
    stand_in.__path__ = list(spec.submodule_search_locations)
    stand_in.__spec__ = spec
    sys.modules["skopt"] = stand_in
    try:
        return importlib.import_module("skopt.space")
    finally:
        if sys.modules.get("skopt") is stand_in:
            del sys.modules["skopt"]


_space = _load_space()
Categorical = _space.Categorical
Dimension = _space.Dimension
Integer = _space.Integer
Real = _space.Real
Space = _space.Space
# the transformers the dimensions use (the optimizer snaps candidates by their kind)
CategoricalEncoder = _space.CategoricalEncoder
Identity = _space.Identity
Normalize = _space.Normalize
Pipeline = _space.Pipeline

__all__ = ["Categorical", "CategoricalEncoder", "Dimension", "Identity", "Integer",
           "Normalize", "Pipeline", "Real", "Space"]
