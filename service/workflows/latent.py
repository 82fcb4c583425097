"""Latent structure: a rotation-invariant VAE on atom-centred patches, clustered by a GMM.

After Slautin et al. (reward-driven discovery of microstructure representations with
invariant VAEs). Steps for one candidate:

1. patches of (2h+1)^2 px around the atoms of ``ctx.atoms`` (all of them, or one sublattice),
   h = ``window`` eighths of a lattice spacing;
2. an iVAE (:class:`rewardscope.science.vae.LatentModel`, rotation-invariant by default) maps each
   patch to ``latent_dim`` content latents. A model is trained once per session per
   architecture (patch size, latent_dim), on the first frame that asks for it, and reused on
   later frames; the workflow counts trainings and model swaps;
3. a Gaussian mixture (``n_components``, ``covariance_type``) on the latent means, fitted on
   interior patches (no mirror padding), labels every used atom.

Rewards, the paper's three families (in the reward registry, so configs can name them):

* ``latent_bic`` (min): BIC of the mixture per fitted patch. The paper's GMM reward: fit
  quality vs. components, i.e. latent-space parsimony (BIC / n so frames compare, as the paper
  suggests). The GMM gets ``reg_covar`` = GMM_REG_COVAR, a floor so a collapsed latent does
  not score an unbounded likelihood.
* ``latent_variance`` (max): log10 of the product of the per-dimension variances of the
  latent means (paper eq. 2, taken as log10 so the optimizer sees a well-scaled number; the
  Pareto order is the same). The paper's point: BIC *prefers* a collapsed latent (dense,
  simply shaped), and the variance product drops to ~0 (here: very negative) when any latent
  dimension collapses, so it must be maximised alongside BIC. It also penalises a latent
  dimension that carries nothing, which is how it tunes ``latent_dim``.
* ``latent_reconstruction`` (min): mean squared reconstruction error per pixel (paper eq. 1,
  per pixel instead of per patch so window sizes compare): how much of the patch the latent
  keeps.

The ICL of the paper (BIC + assignment entropy, favouring separated clusters) is reported in
the output as ``icl_per_site`` but is not an objective.

Measured on simulated 192 x 192 frames (lattice 12 px, 512 atoms; hidden 32, 10 epochs,
one CPU thread of a busy 2-core host: 2-3 s to train on 512 patches of 13 px, ~5.5 s on 1024,
~9.5 s on 1024 of 19 px, hence ``max_train`` = 512):

* one domain, all atoms, 2 components: labels = A/B sites, ARI 1.0 for every window;
* two domains, B sublattice, 2 components: labels = polarization domains, ARI 1.0 (window 4
  and 6; 0.67 at window 5). The two variants are a 180 degree pair: a fully rotation-invariant
  encoder would merge them; at this training budget the angle latent hardly learns rotation
  (it barely moves for rotated patches), so the content latent keeps them apart;
* two domains, all atoms: the latent holds site x domain (4 clusters). Window 4 with 4
  components gives ARI 0.92 against site x domain, and BIC prefers 4 components over 2 or 3;
  with 2 components window 4 splits by a mix (site ARI 0.25), windows 5-6 by site (ARI 1.0);
* one domain, B only: nothing varies, every latent dimension collapses (``latent_variance``
  -24, the floor) and BIC is at its best: the paper's collapse case, which is why the
  variance reward is there.

Output: ``labels`` (N,) int16 per atom of ``ctx.atoms`` (-1 = not used), ``latent`` (N, d)
float32 (NaN rows for atoms not used), ``angle`` (N,) rotation latent (NaN when unused or the
model is not rotation-invariant), ``model`` (its name, for the model_swap metric), and
``timings`` with ``vae`` (training + encoding seconds spent in this call, ~0 when cached).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from skopt.space import Categorical, Integer

from rewardscope.science import descriptors, kernels, mixtures
from rewardscope.science.rewards import latent_bic, latent_reconstruction, latent_variance
from rewardscope.science.vae import LatentModel
from rewardscope.workflows.base import (
    ATOMS,
    LABELS,
    PER_ATOM,
    SCALAR,
    Evaluation,
    FrameContext,
    Output,
    Workflow,
    single_thread,
)

__all__ = ["LatentWorkflow", "latent_bic", "latent_reconstruction", "latent_variance"]

SUBLATTICES = {"A": 0, "B": 1}
WINDOW_UNIT = 8  # window = patch half-width in 1/WINDOW_UNIT lattice spacings
GMM_REG_COVAR = 1e-4  # latent variance floor for the mixture (latent stds are ~0.1 here)
GMM_SEED = 0
MIN_SITES = 8


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def half_window(window: int, lattice_px: float) -> int:
    """Patch half-width in px of a ``window`` candidate parameter.

    The window is searched in eighths of a lattice spacing so one search space serves every
    magnification.

    Parameters
    ----------
    window : int
        Patch half-width in 1/WINDOW_UNIT lattice spacings.
    lattice_px : float
        Lattice spacing in px.

    Returns
    -------
    int
        Half-width in px, rounded half up, at least 2.
    """
    return max(2, int(math.floor(int(window) * float(lattice_px) / WINDOW_UNIT + 0.5)))


def fit_mixture(z: np.ndarray, fit_rows: np.ndarray, k: int,
                cov: str) -> tuple[np.ndarray, float, float]:
    """Label the latent means by a Gaussian mixture; the paper's BIC and ICL with them.

    :func:`rewardscope.science.mixtures.mixture_labels` in float64 on the interior patches,
    with a larger iteration budget and a tighter tolerance than the domain workflow (the
    latent has 2-3 dimensions, a fit costs little) and ``reg_covar`` = GMM_REG_COVAR.

    Parameters
    ----------
    z : (N, d) array_like of float
        Latent means, one row per atom (latent units).
    fit_rows : (N,) array_like of bool
        Rows the mixture is fitted on (patches wholly inside the frame).
    k : int
        Number of components.
    cov : {"full", "tied", "diag", "spherical"}
        Covariance type.

    Returns
    -------
    labels : (N,) ndarray of int16
        Label of every row, renumbered by decreasing cluster size.
    bic : float
        BIC per fitted row.
    icl : float
        ICL per fitted row: BIC plus the assignment entropy -sum tau log tau.

    Raises
    ------
    ValueError
        For an unknown ``cov`` or a degenerate latent (ill-defined covariances).
    """
    fit = mixtures.mixture_labels(np.asarray(z, dtype=np.float64), k, cov, fit_rows=fit_rows,
                                  seed=GMM_SEED, n_init=2, max_iter=200, tol=1e-4,
                                  reg_covar=GMM_REG_COVAR)
    return fit.labels, fit.bic_per_row, fit.icl_per_row


@dataclass
class _Encoded:
    """One model's view of one frame's atom set (cached in ctx.cache)."""

    latent: np.ndarray  # (n, d) content latent means of the used atoms
    angle: np.ndarray | None  # (n,) rotation latent, or None
    valid: np.ndarray  # (n,) patch wholly inside the frame (fitted rows)
    reconstruction: float  # mean squared error per pixel on the valid patches
    variance: float  # latent_variance on the valid rows


# --------------------------------------------------------------------------------------------
# the workflow
# --------------------------------------------------------------------------------------------


class LatentWorkflow(Workflow):
    """iVAE latents at atoms -> GMM labels, scored by the paper's latent rewards; see module.

    ``sublattice``: None = every atom of ``ctx.atoms``, "A" or "B" = that sublattice only
    (``ctx.sites``, else classified by column intensity). ``invariances``, ``hidden``,
    ``epochs``, ``batch_size``, ``max_train`` (patches per training, a seeded random subset)
    fix the training budget; they are not searched, so the search space holds only
    3 windows x 2 latent sizes = 6 models. ``checkpoint_dir``: when set, a trained model is
    saved there as ``<name>.pt`` and a later session loads it instead of training.

    What a session learns sits in attributes ending in ``_`` (scikit-learn's convention):
    ``models_`` (the trained models by (patch px, latent_dim), least recently used first),
    ``current_`` (name of the model in use), ``model_swaps_`` and ``trainings_`` (counts).
    """

    name = "latent"
    space = (
        Integer(4, 6, name="window"),  # patch half-width, eighths of a lattice spacing
        Integer(2, 3, name="latent_dim"),
        Integer(2, 4, name="n_components"),
        Categorical(list(mixtures.COVARIANCE_TYPES), name="covariance_type"),
    )
    rewards = ("latent_bic", "latent_variance", "latent_reconstruction")
    needs = (ATOMS,)
    produces = (
        Output("labels", LABELS),
        Output("latent", PER_ATOM),
        Output("model", SCALAR),
    )

    def __init__(self, sublattice: str | None = None, invariances: tuple[str, ...] = ("r",),
                 hidden: tuple[int, ...] = (32,), epochs: int = 10, batch_size: int = 64,
                 max_train: int = 512, device: str | None = None, seed: int = 0,
                 max_models: int = 8, checkpoint_dir: str | Path | None = None) -> None:
        if sublattice is not None and sublattice not in SUBLATTICES:
            raise ValueError(f"sublattice must be None or one of {tuple(SUBLATTICES)}, "
                             f"got {sublattice!r}")
        self.sublattice = sublattice
        self.invariances = tuple(invariances)
        self.hidden = tuple(hidden)
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.max_train = int(max_train)
        self.device = device
        self.seed = int(seed)
        self.max_models = max(1, int(max_models))
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.models_: OrderedDict[tuple[int, int], LatentModel] = OrderedDict()
        self.current_: str | None = None  # name of the model in use
        self.model_swaps_ = 0  # times the model in use changed (the first one included)
        self.trainings_ = 0  # models trained this session (loaded checkpoints excluded)

    def default_params(self, lattice_px: float) -> dict[str, Any]:
        """Half a lattice spacing (the nearest other-sublattice columns at the corners), a 2-D
        latent as in the paper, 2 components, full covariance."""
        return {"window": 4, "latent_dim": 2, "n_components": 2, "covariance_type": "full"}

    # ---------------------------------------------------------------- per-frame work
    def prepare(self, ctx: FrameContext) -> None:
        """Select the atoms once per frame (and atom set)."""
        if ctx.atoms is not None:
            self._used(ctx)

    def _used(self, ctx: FrameContext) -> np.ndarray:
        """Indices into ctx.atoms of the atoms this workflow labels."""
        if ctx.atoms is None:
            raise ValueError("latent workflow needs ctx.atoms (run the atoms workflow first)")
        atoms = np.asarray(ctx.atoms, dtype=np.float64).reshape(-1, 2)
        key = ("latent", "used", self.sublattice, descriptors.fingerprint(atoms))
        if key not in ctx.cache:
            if self.sublattice is None:
                index = np.arange(len(atoms))
            else:
                site = descriptors.sublattices(ctx.image, atoms, ctx.sites)
                ctx.sites = site  # later workflows on these atoms read the same split
                index = np.flatnonzero(np.asarray(site) == SUBLATTICES[self.sublattice])
            ctx.cache[key] = index
        return ctx.cache[key]

    # ---------------------------------------------------------------- models
    def _model(self, patch_px: int, latent_dim: int, patches: np.ndarray) -> LatentModel:
        """The model for this architecture: cached, else loaded from a checkpoint, else trained
        on ``patches`` (this frame's). Counts a swap when the model in use changes."""
        key = (patch_px, latent_dim)
        model = self.models_.get(key)
        if model is None:
            model = LatentModel(patch_px, latent_dim, self.invariances, self.hidden,
                                device=self.device, seed=self.seed)
            if not self._load_checkpoint(model):
                model.fit(self._training_set(patches), self.epochs, self.batch_size)
                self.trainings_ += 1
                self._save_checkpoint(model)
            self.models_[key] = model
            while len(self.models_) > self.max_models:
                self.models_.popitem(last=False)
        self.models_.move_to_end(key)
        if model.name != self.current_:
            self.current_ = model.name
            self.model_swaps_ += 1
        return model

    def _training_set(self, patches: np.ndarray) -> np.ndarray:
        """At most ``max_train`` patches, a seeded random subset: bounds the training time."""
        if len(patches) <= self.max_train:
            return patches
        pick = np.random.default_rng(self.seed).choice(len(patches), self.max_train,
                                                       replace=False)
        return patches[np.sort(pick)]

    def _checkpoint_path(self, model: LatentModel) -> Path | None:
        return self.checkpoint_dir / f"{model.name}.pt" if self.checkpoint_dir else None

    def _load_checkpoint(self, model: LatentModel) -> bool:
        path = self._checkpoint_path(model)
        if path is None or not path.is_file():
            return False
        model.load(path)
        return True

    def _save_checkpoint(self, model: LatentModel) -> None:
        path = self._checkpoint_path(model)
        if path is not None:
            model.save(path)

    # ---------------------------------------------------------------- one candidate
    def _encoded(self, ctx: FrameContext, index: np.ndarray, half: int,
                 latent_dim: int) -> tuple[_Encoded, LatentModel]:
        """Patches -> (trained) model -> latents, reconstruction and variance, cached per
        frame, atom set and model: candidates that differ only in the GMM reuse them."""
        atoms = np.asarray(ctx.atoms, dtype=np.float64).reshape(-1, 2)[index]
        tag = ("latent", "patches", half, descriptors.fingerprint(atoms))
        if tag not in ctx.cache:
            patches = kernels.extract_patches(ctx.image, atoms, half, half)
            valid = kernels.patches_valid(atoms, ctx.shape, half, half)
            ctx.cache[tag] = (patches, valid)
        patches, valid = ctx.cache[tag]
        rows = mixtures.trusted_rows(valid, MIN_SITES)
        model = self._model(2 * half + 1, latent_dim, patches[rows])
        key = ("latent", "encoded", model.name, tag)
        if key not in ctx.cache:
            z, angle = model.encode(patches)
            ctx.cache[key] = _Encoded(
                latent=z, angle=angle, valid=rows,
                reconstruction=latent_reconstruction(model.reconstruction_error(patches[rows])),
                variance=latent_variance(z[rows]))
        return ctx.cache[key], model

    def evaluate(self, ctx: FrameContext, params: dict[str, Any]) -> Evaluation:
        """Encode (training the model if this architecture is new), cluster, score."""
        index = self._used(ctx)
        k = int(params["n_components"])
        n_atoms = len(np.asarray(ctx.atoms).reshape(-1, 2))
        if len(index) < max(MIN_SITES, 2 * k):
            return self._empty(n_atoms, int(params["latent_dim"]))
        t0 = time.perf_counter()
        half = half_window(params["window"], ctx.lattice_px)
        enc, model = self._encoded(ctx, index, half, int(params["latent_dim"]))
        t_vae = time.perf_counter() - t0
        try:
            with single_thread():
                sub, bic, icl = fit_mixture(enc.latent, enc.valid, k,
                                            str(params["covariance_type"]))
        except (ValueError, np.linalg.LinAlgError):  # degenerate latent: worst case
            return self._empty(n_atoms, int(params["latent_dim"]), model.name)
        rw = {"latent_bic": latent_bic(bic), "latent_variance": enc.variance,
              "latent_reconstruction": enc.reconstruction}
        out = self._output(n_atoms, index, sub, enc, model.name)
        out.update(bic_per_site=bic, icl_per_site=icl, patch_px=2 * half + 1,
                   model_swaps=self.model_swaps_)
        return Evaluation(rewards=rw, output=out, timings={"vae": t_vae})

    @staticmethod
    def _output(n_atoms: int, index: np.ndarray, sub: np.ndarray, enc: _Encoded,
                model_name: str) -> dict[str, Any]:
        labels = np.full(n_atoms, -1, dtype=np.int16)
        labels[index] = sub
        latent = np.full((n_atoms, enc.latent.shape[1]), np.nan, dtype=np.float32)
        latent[index] = enc.latent
        angle = np.full(n_atoms, np.nan, dtype=np.float32)
        if enc.angle is not None:
            angle[index] = enc.angle
        return {"labels": labels, "latent": latent, "angle": angle, "model": model_name}

    @staticmethod
    def _empty(n_atoms: int, latent_dim: int, model_name: str = "") -> Evaluation:
        """Too few atoms or a degenerate latent: worst rewards, nothing labelled."""
        out = {"labels": np.full(n_atoms, -1, np.int16),
               "latent": np.full((n_atoms, latent_dim), np.nan, np.float32),
               "angle": np.full(n_atoms, np.nan, np.float32), "model": model_name}
        rw = {"latent_bic": math.inf, "latent_variance": -math.inf,
              "latent_reconstruction": math.inf}
        return Evaluation(rewards=rw, output=out)
