"""A small invariant-VAE model manager: train once, encode many frames, checkpoint, swap.

Wraps a pyroved ``iVAE`` (Slautin et al.: rotation-invariant VAEs give parsimonious latent
representations of local structure) behind the few calls a workflow needs:

* :meth:`LatentModel.fit` trains with pyroved's ``SVItrainer`` and keeps the per-epoch loss;
* :meth:`LatentModel.encode` gives the posterior means of the *content* latents, and the
  rotation angle separately (the ``"r"`` latent is a nuisance the model factors out);
* :meth:`LatentModel.reconstruction_error` is the paper's reconstruction reward (per pixel);
* :meth:`LatentModel.save` / :meth:`LatentModel.load` checkpoint weights only (a state dict of
  tensors, loaded with ``weights_only=True``: no pickled code runs on load).

Device: ``"cuda"`` when a GPU is visible, else ``"cpu"``; everything the model touches is moved
there explicitly (pyroved's own ``encode`` picks CUDA whenever it exists, whatever the model's
device, so this module runs the encoder itself).

pyro keeps parameters in one global param store, keyed by module name ("encoder_z",
"decoder"), and any two pyroved models share those names. Training therefore clears the store
and holds a module-level lock; encoding and decoding call the torch modules directly and need
neither. On CPU, training runs torch single-threaded: the per-pixel decoder of an iVAE is many
small matmuls, and on a shared 2-core host two threads measured ~10x slower than one.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyro
import torch
from pyroved.models import iVAE
from pyroved.trainers import SVItrainer
from pyroved.utils import init_dataloader, transform_coordinates

__all__ = ["INVARIANCES", "LatentModel", "TrainHistory", "default_device"]

log = logging.getLogger(__name__)

INVARIANCES = ("r", "t", "s")  # pyroved: rotation, translation, scale
_TRAIN_LOCK = threading.Lock()  # pyro's param store is global: one training at a time
ENCODE_BATCH = 1024


def default_device() -> str:
    """The torch device a model uses when none is given: a GPU when torch sees one.

    Returns
    -------
    str
        ``"cuda"`` or ``"cpu"``.
    """
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class TrainHistory:
    """What one :meth:`LatentModel.fit` did, kept for logs and checks.

    Attributes
    ----------
    loss : list of float
        Training loss per epoch: pyroved's negative ELBO per patch.
    seconds : float
        Wall time of the fit, s.
    n_patches : int
        Patches trained on.
    """

    loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    n_patches: int = 0


@contextmanager
def _torch_threads(device: str, threads: int | None) -> Iterator[None]:
    """Limit torch's intra-op threads on CPU for the ``with`` body, then restore them."""
    if device != "cpu" or not threads:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _as_patches(patches: np.ndarray, patch_px: int) -> np.ndarray:
    """(N, p, p) float32 in [0, 1]: the Bernoulli decoder needs probabilities."""
    arr = np.asarray(patches, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[1:] != (patch_px, patch_px):
        raise ValueError(f"patches must have shape (N, {patch_px}, {patch_px}), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("patches contain NaN or inf")
    return np.clip(arr, 0.0, 1.0)


class LatentModel:
    """An iVAE on square patches: train once, encode many frames; see the module docstring.

    Configuration is what the constructor was given; what training learns (the network's
    weights, the loss history) and what was resolved at run time (the device) sit in
    attributes ending in ``_``, as in scikit-learn.

    Parameters
    ----------
    patch_px : int
        Patch side in px (>= 3).
    latent_dim : int, optional
        Content latents (>= 1; default 2), besides the coordinate latents of the invariances.
    invariances : sequence of {"r", "t", "s"}, optional
        Rotation, translation, scale factored out of the content (default ``("r",)``;
        empty for a vanilla VAE).
    hidden : sequence of int, optional
        Hidden layer widths of encoder and decoder (default ``(64,)``).
    device : str, optional
        Torch device; None (default) = :func:`default_device`.
    seed : int, optional
        Seed of the weights and of training (default 0): same data, same weights.
    lr : float, optional
        Adam learning rate (default 3e-3).
    threads : int or None, optional
        Torch threads while running on CPU (default 1; None leaves torch's setting alone).

    Attributes
    ----------
    vae_ : pyroved.models.iVAE
        The network; its weights are what :meth:`fit` learns (or :meth:`load` restores).
    history_ : TrainHistory
        The last training (empty before any).
    device_ : str
        The device in use.

    Raises
    ------
    ValueError
        If ``patch_px``, ``latent_dim`` or a ``hidden`` width is not an integer in range,
        ``hidden`` is empty, or ``invariances`` are not distinct items of INVARIANCES.
    """

    def __init__(self, patch_px: int, latent_dim: int = 2,
                 invariances: Sequence[str] = ("r",), hidden: Sequence[int] = (64,),
                 device: str | None = None, seed: int = 0, lr: float = 3e-3,
                 threads: int | None = 1) -> None:
        self.patch_px = _check_int(patch_px, "patch_px", 3)
        self.latent_dim = _check_int(latent_dim, "latent_dim", 1)
        self.invariances = tuple(invariances)
        bad = [i for i in self.invariances if i not in INVARIANCES]
        if bad or len(set(self.invariances)) != len(self.invariances):
            raise ValueError(f"invariances must be distinct items of {INVARIANCES}, "
                             f"got {self.invariances}")
        self.hidden = tuple(_check_int(h, "hidden", 1) for h in hidden)
        if not self.hidden:
            raise ValueError("hidden must hold at least one layer width")
        self.device = device
        self.seed = int(seed)
        self.lr = float(lr)
        self.threads = threads
        self.device_ = device or default_device()
        self.history_ = TrainHistory()
        with _TRAIN_LOCK:  # iVAE() clears pyro's global param store
            _seed_everything(self.seed)
            self.vae_ = iVAE((self.patch_px, self.patch_px), self.latent_dim,
                             invariances=list(self.invariances) or None,
                             hidden_dim_e=list(self.hidden), hidden_dim_d=list(self.hidden),
                             seed=self.seed, device=self.device_)
        self.vae_.eval()

    # ------------------------------------------------------------------ identity
    @property
    def n_special(self) -> int:
        """Leading latents that are coordinate transforms (angle, dx, dy, scale), not content."""
        return int(self.vae_.z_dim) - self.latent_dim

    @property
    def config(self) -> dict:
        """Architecture, as plain data (what a checkpoint must match)."""
        return {"patch_px": self.patch_px, "latent_dim": self.latent_dim,
                "invariances": list(self.invariances), "hidden": list(self.hidden)}

    @property
    def name(self) -> str:
        """E.g. ``ivae-r-d2-p13-1a2b3c4d``: architecture plus a short hash of the config and
        seed, so the model_swap metric labels which model is in use."""
        inv = "".join(self.invariances) or "none"
        digest = hashlib.sha1(repr((self.config, self.seed)).encode()).hexdigest()[:8]
        return f"ivae-{inv}-d{self.latent_dim}-p{self.patch_px}-{digest}"

    @property
    def trained(self) -> bool:
        """True once :meth:`fit` ran or weights were loaded."""
        return bool(self.history_.loss)

    # ------------------------------------------------------------------ training
    def fit(self, patches: np.ndarray, epochs: int = 20, batch_size: int = 128) -> TrainHistory:
        """Train the network on ``patches``; the history is returned and kept in ``history_``.

        Seeds are reset first, so the same data and settings give the same weights. Loss per
        epoch is pyroved's negative ELBO per patch, logged at DEBUG.

        Parameters
        ----------
        patches : (N, p, p) array_like of float
            Training patches, intensities in [0, 1] (clipped: the decoder is Bernoulli).
        epochs : int, optional
            Passes over the patches (>= 1; default 20).
        batch_size : int, optional
            Patches per optimizer step (default 128).

        Returns
        -------
        TrainHistory
            Loss per epoch, wall time in s, number of patches.

        Raises
        ------
        ValueError
            If ``patches`` is empty, not (N, patch_px, patch_px) or not finite, or
            ``epochs`` < 1.
        """
        x = torch.from_numpy(_as_patches(patches, self.patch_px))
        if len(x) == 0:
            raise ValueError("patches must hold at least one patch to fit")
        epochs = _check_int(epochs, "epochs", 1)
        history = TrainHistory(n_patches=len(x))
        t0 = time.perf_counter()
        with _TRAIN_LOCK, _torch_threads(self.device_, self.threads):
            _seed_everything(self.seed)
            trainer = SVItrainer(self.vae_, seed=self.seed, lr=self.lr, device=self.device_)
            # Batches are assembled on the CPU (shuffled by the seeded global torch RNG) and
            # moved to self.device_ by the trainer.
            loader = init_dataloader(x, batch_size=int(batch_size), shuffle=True)
            self.vae_.train()
            try:
                for epoch in range(epochs):
                    trainer.step(loader)
                    history.loss.append(float(trainer.loss_history["training_loss"][-1]))
                    log.debug("%s epoch %d loss %.4f", self.name, epoch + 1, history.loss[-1])
            finally:
                self.vae_.eval()
                pyro.clear_param_store()  # drop the store's references to these weights
        history.seconds = time.perf_counter() - t0
        self.history_ = history
        log.info("%s trained on %d patches, %d epochs, %.2f s, loss %.3f -> %.3f", self.name,
                 len(x), epochs, history.seconds, history.loss[0], history.loss[-1])
        return history

    # ------------------------------------------------------------------ inference
    def _posterior(self, patches: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder means and scales of all latents, (N, z_dim) each, on the CPU."""
        x = torch.from_numpy(_as_patches(patches, self.patch_px))
        locs, scales = [], []
        with torch.no_grad(), _torch_threads(self.device_, self.threads):
            for start in range(0, len(x), ENCODE_BATCH):
                batch = x[start:start + ENCODE_BATCH].to(self.device_)
                loc, scale = self.vae_.encoder_z(batch)
                locs.append(loc.cpu())
                scales.append(scale.cpu())
        if not locs:
            empty = torch.zeros(0, int(self.vae_.z_dim))
            return empty, empty
        return torch.cat(locs), torch.cat(scales)

    def encode(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Encoder means of the content latents, and of the rotation angle when there is one.

        The content latents are what the workflow clusters; the angle is a nuisance the model
        factors out. The encoder only learns angles the training set shows: on lattice
        patches that all share one orientation and a ~10-epoch budget the angle stays near
        the prior.

        Parameters
        ----------
        patches : (N, p, p) array_like of float
            Patches, intensities in [0, 1] (clipped).

        Returns
        -------
        latent : (N, latent_dim) ndarray of float32
            Content latent means.
        angle : (N,) ndarray of float32 or None
            Rotation latent mean in radians when ``"r"`` is an invariance, else None.

        Raises
        ------
        ValueError
            If ``patches`` is not (N, patch_px, patch_px) or not finite.
        """
        loc, _ = self._posterior(patches)
        loc = loc.numpy().astype(np.float32)
        angle = loc[:, 0].copy() if "r" in self.invariances else None
        return loc[:, self.n_special:], angle

    def reconstruct(self, patches: np.ndarray) -> np.ndarray:
        """Decoder output at each patch's posterior mean: what the model 'sees'.

        Each patch's own angle and shift are included (pyroved's ``decode`` takes one angle
        for all).

        Parameters
        ----------
        patches : (N, p, p) array_like of float
            Patches, intensities in [0, 1] (clipped).

        Returns
        -------
        (N, p, p) ndarray of float32
            Reconstructions, intensities in [0, 1].
        """
        loc, _ = self._posterior(patches)
        out = []
        with torch.no_grad(), _torch_threads(self.device_, self.threads):
            for start in range(0, len(loc), ENCODE_BATCH):
                out.append(self._decode_full(loc[start:start + ENCODE_BATCH].to(self.device_)))
        if not out:
            return np.zeros((0, self.patch_px, self.patch_px), np.float32)
        return torch.cat(out).numpy().astype(np.float32)

    def _decode_full(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output for full latent vectors (special + content), as in iVAE.model."""
        vae = self.vae_
        if vae.coord == 0:
            return vae.decoder(z).cpu()
        phi, dx, sc, content = vae.split_latent(z)
        if "t" in self.invariances:
            dx = (dx * vae.t_prior).unsqueeze(1)
        grid = vae.grid.expand(z.shape[0], *vae.grid.shape)
        return vae.decoder(transform_coordinates(grid, phi, dx, sc), content).cpu()

    def reconstruction_error(self, patches: np.ndarray) -> float:
        """Mean squared error per pixel between patches and their reconstructions.

        The paper's reconstruction reward, made independent of patch size so windows compare.

        Parameters
        ----------
        patches : (N, p, p) array_like of float
            Patches, intensities in [0, 1] (clipped).

        Returns
        -------
        float
            Mean squared error per pixel, in squared intensity units; +inf (worst) for no
            patches.
        """
        x = _as_patches(patches, self.patch_px)
        if len(x) == 0:
            return math.inf
        return float(np.mean((self.reconstruct(x) - x) ** 2))

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The learned weights only (CPU tensors), keyed as the torch module names them.

        Returns
        -------
        dict of str to torch.Tensor
            A copy of the network's state dict.
        """
        return {k: v.detach().cpu().clone() for k, v in self.vae_.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load weights from :meth:`state_dict`; loaded weights count as trained.

        Parameters
        ----------
        state : dict of str to torch.Tensor
            Weights of a model with the same :attr:`config`.

        Raises
        ------
        RuntimeError
            If the architecture does not match (torch's strict loading).
        """
        self.vae_.load_state_dict({k: v.to(self.device_) for k, v in state.items()})
        self.vae_.eval()
        if not self.history_.loss:
            self.history_ = TrainHistory(loss=[math.nan])  # loaded weights count as trained

    def save(self, path: str | Path) -> Path:
        """Checkpoint the weights: ``torch.save`` of the state dict only (no pickled objects).

        Parameters
        ----------
        path : str or Path
            Target file (parent folders are created).

        Returns
        -------
        Path
            ``path``.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), path)
        return path

    def load(self, path: str | Path) -> None:
        """Load weights saved by :meth:`save`; ``weights_only=True`` runs no pickled code.

        Parameters
        ----------
        path : str or Path
            A checkpoint of a model with the same :attr:`config`.

        Raises
        ------
        RuntimeError
            If the checkpoint's architecture does not match (torch's strict loading).
        """
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
        self.load_state_dict(state)


def _check_int(value: int, name: str, low: int) -> int:
    if int(value) != value or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _seed_everything(seed: int) -> None:
    """torch (CPU and CUDA), Python and numpy's legacy global RNG, as pyro seeds them."""
    pyro.set_rng_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
