"""Invariant-VAE models: train, encode many frames fast, checkpoint, and hand over atomically.

Wraps a pyroved ``iVAE`` (Slautin et al.: rotation-invariant VAEs give parsimonious latent
representations of local structure) behind the few calls the latent workflow and the
background trainer need:

* :meth:`LatentModel.fit` trains with pyroved's ``SVItrainer`` (KL weight = pyroved's
  ``scale_factor``), keeps the per-epoch loss and stops on a NaN loss (``diverged``);
* :meth:`LatentModel.posterior` is the fast encode path: one batched forward of the encoder
  per up to ``ENCODE_BATCH`` patches under ``torch.inference_mode`` (pyroved's own
  ``encode`` runs batches of 100 with a host copy each, the benchmark's baseline);
* :meth:`LatentModel.encode` gives the posterior means of the *content* latents and the
  rotation angle separately (the ``"r"`` latent is a nuisance the model factors out);
* :meth:`LatentModel.loss_per_pixel` is the paper's reconstruction reward: Bernoulli
  reconstruction loss plus KL, per pixel, so window sizes compare;
* :meth:`LatentModel.save` / :func:`load_checkpoint` checkpoint the weights with the
  architecture and what the model was selected by (plain data and tensors only, loaded with
  ``weights_only=True``: no pickled code runs on load); a corrupt or incompatible file raises
  :class:`CheckpointError`.

A *conditional* model (``c_dim`` > 0, the papers' CrVAE) takes a one-hot of each patch's
sublattice besides the patch; pyroved's conditional encoder wants flattened patches, which
this module passes.

:class:`ModelSlot` is the hand-over between the slow loop (a trainer that swaps models in)
and the fast loop (the workflow that encodes with the model in use and offers the frame's key
points as training material): a lock-protected reference swap and a bounded sample buffer.

Device: ``"cuda"`` when a GPU is visible, else ``"cpu"``; everything the model touches is moved
there explicitly. pyro keeps parameters in one global param store keyed by module name, shared
by any two pyroved models: training therefore clears the store and holds a module-level lock;
encoding calls the torch modules directly and needs neither. On CPU, torch runs with
``threads`` threads (default 1) while this module works: the per-pixel decoder of an iVAE is
many small matmuls, and on a shared 2-core host two threads measured ~10x slower than one.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from pyroved.models import iVAE
from pyroved.trainers import SVItrainer
from pyroved.utils import init_dataloader, transform_coordinates

__all__ = ["CHECKPOINT_FORMAT", "ENCODE_BATCH", "INVARIANCES", "CheckpointError", "FrameSample",
           "LatentModel", "ModelInUse", "ModelSlot", "TrainHistory", "default_device",
           "load_checkpoint", "model_info", "model_slot", "one_hot"]

log = logging.getLogger(__name__)

INVARIANCES = ("r", "t", "s")  # pyroved: rotation, translation, scale
_TRAIN_LOCK = threading.Lock()  # pyro's param store is global: one training at a time
_THREADS_LOCK = threading.Lock()
ENCODE_BATCH = 65536  # patches per encoder forward (32x32 float32: 256 MiB per batch)
CHECKPOINT_FORMAT = "rewardscope-ivae/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (unreadable, not ours, incompatible); says why."""


def default_device() -> str:
    """The torch device a model uses when none is given: a GPU when torch sees one.

    Returns
    -------
    str
        ``"cuda"`` or ``"cpu"``.
    """
    return "cuda" if torch.cuda.is_available() else "cpu"


def one_hot(classes: np.ndarray, n: int) -> np.ndarray:
    """(N, n) float32 one-hot of integer classes (out-of-range classes -> all zeros).

    Parameters
    ----------
    classes : (N,) array_like of int
        Class per row, 0..n-1.
    n : int
        Number of classes (>= 1).

    Returns
    -------
    (N, n) ndarray of float32
    """
    c = np.asarray(classes).astype(np.int64).reshape(-1)
    out = np.zeros((len(c), int(n)), np.float32)
    ok = (c >= 0) & (c < n)
    out[np.flatnonzero(ok), c[ok]] = 1.0
    return out


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
    diverged : bool
        True when an epoch's loss was NaN/inf (training stopped there).
    """

    loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    n_patches: int = 0
    diverged: bool = False


_THREADS_STATE: dict[str, int] = {"depth": 0, "old": 0}


@contextmanager
def _torch_threads(device: str, threads: int | None) -> Iterator[None]:
    """Limit torch's intra-op threads on CPU for the ``with`` body, then restore them.

    torch's thread count is process-wide: it is set by the first thread to enter and restored
    when the last one leaves (the trainer and the fast loop overlap).
    """
    if device != "cpu" or not threads:
        yield
        return
    with _THREADS_LOCK:
        if _THREADS_STATE["depth"] == 0:
            _THREADS_STATE["old"] = torch.get_num_threads()
        _THREADS_STATE["depth"] += 1
        if torch.get_num_threads() != int(threads):
            torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _THREADS_STATE["depth"] -= 1
            if _THREADS_STATE["depth"] == 0 and torch.get_num_threads() != _THREADS_STATE["old"]:
                torch.set_num_threads(_THREADS_STATE["old"])


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
    c_dim : int, optional
        Length of the conditioning one-hot (0, default: not conditional; 2: the sublattice).
    kl_weight : float, optional
        Weight of the KL term in training (pyroved's ``scale_factor``; > 0, default 1).

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
        If ``patch_px``, ``latent_dim``, ``c_dim`` or a ``hidden`` width is not an integer in
        range, ``hidden`` is empty, ``kl_weight`` is not > 0, or ``invariances`` are not
        distinct items of INVARIANCES.
    """

    def __init__(self, patch_px: int, latent_dim: int = 2,
                 invariances: Sequence[str] = ("r",), hidden: Sequence[int] = (64,),
                 device: str | None = None, seed: int = 0, lr: float = 3e-3,
                 threads: int | None = 1, c_dim: int = 0, kl_weight: float = 1.0) -> None:
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
        self.c_dim = _check_int(c_dim, "c_dim", 0)
        self.kl_weight = float(kl_weight)
        if not (math.isfinite(self.kl_weight) and self.kl_weight > 0):
            raise ValueError(f"kl_weight must be > 0, got {kl_weight!r}")
        self.device = device
        self.seed = int(seed)
        self.lr = float(lr)
        self.threads = threads
        self.device_ = device or default_device()
        self._device_checks = self.device_ != "cpu"  # clip + finiteness on the GPU
        self.history_ = TrainHistory()
        inv = ["sc" if i == "s" else i for i in self.invariances]  # pyroved spells scale "sc"
        with _TRAIN_LOCK:  # iVAE() clears pyro's global param store
            _seed_everything(self.seed)
            self.vae_ = iVAE((self.patch_px, self.patch_px), self.latent_dim,
                             invariances=inv or None, c_dim=self.c_dim,
                             hidden_dim_e=list(self.hidden), hidden_dim_d=list(self.hidden),
                             seed=self.seed, device=self.device_)
        self.vae_.eval()

    # ------------------------------------------------------------------ identity
    @property
    def n_special(self) -> int:
        """Leading latents that are coordinate transforms (angle, dx, dy, scale), not content."""
        return int(self.vae_.z_dim) - self.latent_dim

    @property
    def conditional(self) -> bool:
        """True when the model takes a one-hot (the sublattice) besides each patch."""
        return self.c_dim > 0

    @property
    def config(self) -> dict:
        """Architecture, as plain data (what a checkpoint must match)."""
        return {"patch_px": self.patch_px, "latent_dim": self.latent_dim,
                "invariances": list(self.invariances), "hidden": list(self.hidden),
                "c_dim": self.c_dim, "kl_weight": self.kl_weight, "seed": self.seed}

    @property
    def name(self) -> str:
        """E.g. ``ivae-r-d2-p13-1a2b3c4d`` (``civae-...`` when conditional): architecture plus
        a short hash of the config, so metrics and results say which model is in use."""
        inv = "".join(self.invariances) or "none"
        digest = hashlib.sha1(repr(sorted(self.config.items())).encode()).hexdigest()[:8]
        prefix = "civae" if self.conditional else "ivae"
        return f"{prefix}-{inv}-d{self.latent_dim}-p{self.patch_px}-{digest}"

    @property
    def trained(self) -> bool:
        """True once :meth:`fit` ran or weights were loaded."""
        return bool(self.history_.loss)

    def _inputs(self, patches: np.ndarray, c: np.ndarray | None,
                host_checks: bool = True) -> list[torch.Tensor]:
        """Encoder inputs on the CPU: [patches] or [flattened patches, one-hot].

        ``host_checks=False`` skips the host-side clip and finiteness pass (the GPU path
        does both on the device, batch by batch, instead of two passes over host memory).
        """
        if host_checks:
            x = torch.from_numpy(_as_patches(patches, self.patch_px))
        else:
            arr = np.ascontiguousarray(patches, dtype=np.float32)
            if arr.ndim != 3 or arr.shape[1:] != (self.patch_px, self.patch_px):
                raise ValueError(f"patches must have shape (N, {self.patch_px}, "
                                 f"{self.patch_px}), got {arr.shape}")
            x = torch.from_numpy(arr)
        if not self.conditional:
            return [x]
        if c is None:
            raise ValueError(f"c must be given: {self.name} is conditional (c_dim={self.c_dim})")
        cc = np.asarray(c, dtype=np.float32)
        if cc.shape != (len(x), self.c_dim):
            raise ValueError(f"c must have shape ({len(x)}, {self.c_dim}), got {cc.shape}")
        return [x.reshape(len(x), -1), torch.from_numpy(np.ascontiguousarray(cc))]

    # ------------------------------------------------------------------ training
    def fit(self, patches: np.ndarray, epochs: int = 20, batch_size: int = 128,
            c: np.ndarray | None = None, deadline_s: float | None = None,
            stop: Callable[[], bool] | None = None) -> TrainHistory:
        """Train the network on ``patches``; the history is returned and kept in ``history_``.

        Seeds are reset first, so the same data and settings give the same weights. Loss per
        epoch is pyroved's negative ELBO per patch (KL weighted by ``kl_weight``). Training
        stops early, keeping what it learned, when an epoch's loss is NaN/inf
        (``history.diverged``), after ``deadline_s`` seconds, or when ``stop()`` is true.

        Parameters
        ----------
        patches : (N, p, p) array_like of float
            Training patches, intensities in [0, 1] (clipped: the decoder is Bernoulli).
        epochs : int, optional
            Passes over the patches (>= 1; default 20).
        batch_size : int, optional
            Patches per optimizer step (default 128).
        c : (N, c_dim) array_like of float, optional
            One-hot conditions; required for a conditional model.
        deadline_s : float, optional
            Wall-clock budget of the fit, s (checked after each epoch; None = none).
        stop : callable, optional
            Checked after each epoch; True stops the fit.

        Returns
        -------
        TrainHistory
            Loss per epoch, wall time in s, number of patches, divergence.

        Raises
        ------
        ValueError
            If ``patches`` is empty, not (N, patch_px, patch_px) or not finite, ``c`` is
            missing or misshaped for a conditional model, or ``epochs`` < 1.
        """
        inputs = self._inputs(patches, c)
        if len(inputs[0]) == 0:
            raise ValueError("patches must hold at least one patch to fit")
        epochs = _check_int(epochs, "epochs", 1)
        history = TrainHistory(n_patches=len(inputs[0]))
        t0 = time.perf_counter()
        with _TRAIN_LOCK, _torch_threads(self.device_, self.threads):
            _seed_everything(self.seed)
            trainer = SVItrainer(self.vae_, seed=self.seed, lr=self.lr, device=self.device_)
            # Batches are assembled on the CPU (shuffled by the seeded global torch RNG) and
            # moved to self.device_ by the trainer.
            loader = init_dataloader(*inputs, batch_size=int(batch_size), shuffle=True)
            self.vae_.train()
            try:
                for epoch in range(epochs):
                    trainer.step(loader, scale_factor=self.kl_weight)
                    loss = float(trainer.loss_history["training_loss"][-1])
                    history.loss.append(loss)
                    log.debug("%s epoch %d loss %.4f", self.name, epoch + 1, loss)
                    if not math.isfinite(loss):
                        history.diverged = True
                        break
                    if deadline_s is not None and time.perf_counter() - t0 >= deadline_s:
                        break
                    if stop is not None and stop():
                        break
            finally:
                self.vae_.eval()
                pyro.clear_param_store()  # drop the store's references to these weights
        history.seconds = time.perf_counter() - t0
        self.history_ = history
        log.info("%s trained on %d patches, %d epochs, %.2f s, loss %.3f -> %.3f%s", self.name,
                 history.n_patches, len(history.loss), history.seconds, history.loss[0],
                 history.loss[-1], " (diverged)" if history.diverged else "")
        return history

    # ------------------------------------------------------------------ inference
    def posterior(self, patches: np.ndarray, c: np.ndarray | None = None,
                  batch: int = ENCODE_BATCH) -> tuple[np.ndarray, np.ndarray]:
        """Encoder means and scales of all latents (coordinate latents first): the fast path.

        One forward of the encoder per ``batch`` patches under ``torch.inference_mode``, one
        host copy per batch. On a GPU the patches travel as given and are checked (finite)
        and clipped to [0, 1] on the device; on the CPU both happen first, on the host.

        Parameters
        ----------
        patches : (N, p, p) array_like of float
            Patches, intensities in [0, 1] (clipped).
        c : (N, c_dim) array_like of float, optional
            One-hot conditions; required for a conditional model.
        batch : int, optional
            Patches per forward (default ENCODE_BATCH).

        Returns
        -------
        loc, scale : (N, z_dim) ndarray of float32
            Posterior means and standard deviations, latent units.

        Raises
        ------
        ValueError
            If ``patches`` is not (N, patch_px, patch_px) or not finite, or ``c`` is
            missing or misshaped for a conditional model.
        """
        on_device = self._device_checks
        inputs = self._inputs(patches, c, host_checks=not on_device)
        n = len(inputs[0])
        z = int(self.vae_.z_dim)
        if n == 0:
            return np.zeros((0, z), np.float32), np.zeros((0, z), np.float32)
        batch = max(1, int(batch))
        loc = np.empty((n, z), np.float32)
        scale = np.empty((n, z), np.float32)
        finite = []
        with torch.inference_mode(), _torch_threads(self.device_, self.threads):
            for start in range(0, n, batch):
                part = [t[start:start + batch].to(self.device_, non_blocking=True)
                        for t in inputs]
                if on_device:
                    finite.append(torch.isfinite(part[0]).all())
                    part[0] = part[0].clamp(0.0, 1.0)
                mu, sd = self.vae_.encoder_z(part if self.conditional else part[0])
                loc[start:start + len(mu)] = mu.float().cpu().numpy()
                scale[start:start + len(mu)] = sd.float().cpu().numpy()
            if finite and not bool(torch.stack(finite).all()):
                raise ValueError("patches contain NaN or inf")
        return loc, scale

    def encode(self, patches: np.ndarray, c: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray | None]:
        """Encoder means of the content latents, and of the rotation angle when there is one.

        Parameters
        ----------
        patches : (N, p, p) array_like of float
            Patches, intensities in [0, 1] (clipped).
        c : (N, c_dim) array_like of float, optional
            One-hot conditions; required for a conditional model.

        Returns
        -------
        latent : (N, latent_dim) ndarray of float32
            Content latent means.
        angle : (N,) ndarray of float32 or None
            Rotation latent mean in radians when ``"r"`` is an invariance, else None.

        Raises
        ------
        ValueError
            As :meth:`posterior`.
        """
        loc, _ = self.posterior(patches, c)
        angle = loc[:, 0].copy() if "r" in self.invariances else None
        return np.ascontiguousarray(loc[:, self.n_special:]), angle

    def _decode_full(self, z: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """Decoder output (N, p*p) for full latent vectors (special + content), as in
        iVAE.model."""
        vae = self.vae_
        if vae.coord == 0:
            content = z if c is None else torch.cat([z, c], -1)
            return vae.decoder(content).reshape(len(z), -1)
        phi, dx, sc, content = vae.split_latent(z)
        if c is not None:
            content = torch.cat([content, c], -1)
        if "t" in self.invariances:
            dx = (dx * vae.t_prior).unsqueeze(1)
        grid = vae.grid.expand(z.shape[0], *vae.grid.shape)
        return vae.decoder(transform_coordinates(grid, phi, dx, sc), content).reshape(len(z), -1)

    def _reconstruct(self, patches: np.ndarray, c: np.ndarray | None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(x, reconstruction, loc, scale): x and reconstruction as (N, p*p) float32."""
        x = _as_patches(patches, self.patch_px)
        loc, scale = self.posterior(x, c)
        cc = None if not self.conditional else torch.from_numpy(np.asarray(c, np.float32))
        out = np.empty((len(x), self.patch_px * self.patch_px), np.float32)
        step = 4096
        with torch.inference_mode(), _torch_threads(self.device_, self.threads):
            for s in range(0, len(x), step):
                zb = torch.from_numpy(loc[s:s + step]).to(self.device_)
                cb = None if cc is None else cc[s:s + step].to(self.device_)
                out[s:s + step] = self._decode_full(zb, cb).float().cpu().numpy()
        return x.reshape(len(x), -1), out, loc, scale

    def reconstruct(self, patches: np.ndarray, c: np.ndarray | None = None) -> np.ndarray:
        """Decoder output at each patch's posterior mean: what the model 'sees'.

        Parameters
        ----------
        patches : (N, p, p) array_like of float
            Patches, intensities in [0, 1] (clipped).
        c : (N, c_dim) array_like of float, optional
            One-hot conditions; required for a conditional model.

        Returns
        -------
        (N, p, p) ndarray of float32
            Reconstructions, intensities in [0, 1].
        """
        _, rec, _, _ = self._reconstruct(patches, c)
        return rec.reshape(-1, self.patch_px, self.patch_px)

    def reconstruction_error(self, patches: np.ndarray, c: np.ndarray | None = None) -> float:
        """Mean squared error per pixel between patches and their reconstructions.

        Parameters
        ----------
        patches : (N, p, p) array_like of float
            Patches, intensities in [0, 1] (clipped).
        c : (N, c_dim) array_like of float, optional
            One-hot conditions; required for a conditional model.

        Returns
        -------
        float
            Mean squared error per pixel, in squared intensity units; +inf (worst) for no
            patches.
        """
        if len(patches) == 0:
            return math.inf
        x, rec, _, _ = self._reconstruct(patches, c)
        return float(np.mean((rec - x) ** 2))

    def loss_per_pixel(self, patches: np.ndarray, c: np.ndarray | None = None) -> float:
        """Negative ELBO per pixel at the posterior means: Bernoulli reconstruction loss plus
        the KL of each patch's posterior from the prior (unweighted), over the patch's pixels.

        The paper's reconstruction reward with the KL scaled by the descriptor size, so
        windows of different size compare.

        Parameters
        ----------
        patches : (N, p, p) array_like of float
            Patches, intensities in [0, 1] (clipped).
        c : (N, c_dim) array_like of float, optional
            One-hot conditions; required for a conditional model.

        Returns
        -------
        float
            nats per pixel; +inf (worst) for no patches, NaN for a model with NaN weights.
        """
        if len(patches) == 0:
            return math.inf
        x, rec, loc, scale = self._reconstruct(patches, c)
        r = np.clip(rec.astype(np.float64), 1e-6, 1 - 1e-6)
        bce = -(x * np.log(r) + (1 - x) * np.log1p(-r)).sum(axis=1)
        s2 = np.maximum(scale.astype(np.float64), 1e-12) ** 2
        kl = 0.5 * (s2 + loc.astype(np.float64) ** 2 - 1.0 - np.log(s2)).sum(axis=1)
        return float(np.mean(bce + kl) / x.shape[1])

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

    def save(self, path: str | Path, info: dict | None = None) -> Path:
        """Checkpoint: format tag, architecture, ``info`` (plain data) and weights, written to
        a temporary file and renamed (a crash never leaves half a checkpoint).

        Parameters
        ----------
        path : str or Path
            Target file (parent folders are created).
        info : dict, optional
            Plain data kept with the weights (e.g. the rewards the model was selected by).

        Returns
        -------
        Path
            ``path``.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"format": CHECKPOINT_FORMAT, "config": self.config, "info": dict(info or {}),
                    "n_patches": self.history_.n_patches, "state": self.state_dict()}, tmp)
        tmp.replace(path)
        return path

    def load(self, path: str | Path) -> dict:
        """Load weights saved by :meth:`save` into this model; ``weights_only=True``.

        Parameters
        ----------
        path : str or Path
            A checkpoint of a model with the same :attr:`config`.

        Returns
        -------
        dict
            The ``info`` saved with the weights.

        Raises
        ------
        CheckpointError
            If the file cannot be read, is not a checkpoint of this format, or its
            architecture differs from this model's.
        """
        blob = _read_checkpoint(path)
        if blob["config"] != self.config:
            raise CheckpointError(f"checkpoint {path}: architecture {blob['config']} differs "
                                  f"from {self.config}")
        try:
            self.load_state_dict(blob["state"])
        except (RuntimeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {path}: weights do not load: {exc}") from None
        self.history_.n_patches = int(blob.get("n_patches", 0))
        return dict(blob.get("info") or {})


def _read_checkpoint(path: str | Path) -> dict:
    try:
        blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds on a corrupt file
        raise CheckpointError(f"checkpoint {path} cannot be read: "
                              f"{type(exc).__name__}: {exc}") from None
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a {CHECKPOINT_FORMAT} checkpoint")
    if not isinstance(blob.get("config"), dict) or not isinstance(blob.get("state"), dict):
        raise CheckpointError(f"checkpoint {path} lacks its config or weights")
    return blob


def load_checkpoint(path: str | Path, device: str | None = None,
                    threads: int | None = 1) -> tuple[LatentModel, dict]:
    """A model rebuilt from a checkpoint written by :meth:`LatentModel.save`.

    Parameters
    ----------
    path : str or Path
        The checkpoint.
    device : str, optional
        Torch device; None = :func:`default_device`.
    threads : int or None, optional
        Torch threads on CPU (as :class:`LatentModel`).

    Returns
    -------
    model : LatentModel
        The model, weights loaded.
    info : dict
        The plain data saved with it.

    Raises
    ------
    CheckpointError
        If the file is unreadable, not of CHECKPOINT_FORMAT, or its config or weights do not
        make a model.
    """
    blob = _read_checkpoint(path)
    cfg = blob["config"]
    try:
        model = LatentModel(int(cfg["patch_px"]), int(cfg["latent_dim"]),
                            tuple(cfg["invariances"]), tuple(cfg["hidden"]), device=device,
                            seed=int(cfg.get("seed", 0)), threads=threads,
                            c_dim=int(cfg.get("c_dim", 0)),
                            kl_weight=float(cfg.get("kl_weight", 1.0)))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: incompatible config {cfg}: {exc}") from None
    return model, model.load(path)


# ------------------------------------------------------------------------------ hand-over


@dataclass(frozen=True)
class ModelInUse:
    """The model the fast loop encodes with, and what is known about it (plain data).

    ``info`` keys: ``id`` (the model's name), ``architecture`` (its config), ``rewards``
    (the latent rewards it was selected by), ``train_s`` (training time, s), ``n_patches``
    (patches trained on), ``sublattice`` ("A", "B" or "all": the key points it encodes).
    """

    model: LatentModel
    info: dict


@dataclass
class FrameSample:
    """Training material one frame offers: the image and its key points.

    ``image`` (H, W) float32 in [0, 1]; ``keypoints`` (N, 2) x, y px; ``sites`` (N,) int8
    sublattice (0 = A, 1 = B, -1 = none); ``spacing_px`` the key points' scale (lattice
    spacing or grid step), px.
    """

    image: np.ndarray
    keypoints: np.ndarray
    sites: np.ndarray
    spacing_px: float


class ModelSlot:
    """The fast loop's model in use plus a bounded buffer of training samples; thread-safe.

    Parameters
    ----------
    max_frames : int, optional
        Frames kept in the sample buffer (default 8; oldest dropped first).
    max_keypoints : int, optional
        Key points kept over all buffered frames (default 20000; oldest frames dropped
        first, a single larger frame is subsampled).

    Attributes
    ----------
    swaps_ : int
        Times a model was swapped in.
    offered_ : int
        Frames offered since the start.
    """

    def __init__(self, max_frames: int = 8, max_keypoints: int = 20000) -> None:
        self.max_frames = max(1, int(max_frames))
        self.max_keypoints = max(1, int(max_keypoints))
        self._lock = threading.Lock()
        self._current: ModelInUse | None = None
        self._samples: deque[FrameSample] = deque()
        self.swaps_ = 0
        self.offered_ = 0
        self.collect = False  # the fast loop offers samples only while a trainer wants them
        # where offered samples go instead of the buffer (a trainer in another process); it
        # must neither block nor raise: it runs in the analysis thread
        self.sink: Callable[[FrameSample], None] | None = None

    def current(self) -> ModelInUse | None:
        """The model in use (None before any); one reference read, never half a swap."""
        return self._current

    def swap(self, model: LatentModel, info: dict) -> ModelInUse:
        """Make ``model`` the model in use, atomically (a reference assignment under the lock).

        Parameters
        ----------
        model : LatentModel
            A trained model.
        info : dict
            Plain data about it (see :class:`ModelInUse`).

        Returns
        -------
        ModelInUse
            What the fast loop now reads.
        """
        entry = ModelInUse(model=model, info={"id": model.name, **dict(info)})
        with self._lock:
            self._current = entry
            self.swaps_ += 1
        return entry

    def clear(self) -> None:
        """Forget the model in use and the buffered samples."""
        with self._lock:
            self._current = None
            self._samples.clear()

    def offer(self, sample: FrameSample) -> None:
        """Buffer a frame's training material (bounded; see the class parameters), or hand it
        to ``sink`` when one is set.

        The buffer is cleared when the sample's scale differs by more than 25 % from the
        buffered ones (the microscope zoomed: patches of one window no longer compare).

        Parameters
        ----------
        sample : FrameSample
            The frame's image and key points (kept by reference: do not modify them).
        """
        kp = np.asarray(sample.keypoints)
        if len(kp) > self.max_keypoints:
            pick = np.sort(np.random.default_rng(self.offered_).choice(
                len(kp), self.max_keypoints, replace=False))
            sample = FrameSample(sample.image, kp[pick], np.asarray(sample.sites)[pick],
                                 sample.spacing_px)
        sink = self.sink
        if sink is not None:
            self.offered_ += 1
            sink(sample)
            return
        with self._lock:
            self.offered_ += 1
            if self._samples:
                ratio = sample.spacing_px / self._samples[-1].spacing_px
                if not 0.8 <= ratio <= 1.25:
                    self._samples.clear()
            self._samples.append(sample)
            while len(self._samples) > self.max_frames or (
                    len(self._samples) > 1 and self.n_keypoints() > self.max_keypoints):
                self._samples.popleft()

    def n_keypoints(self) -> int:
        """Key points in the buffer."""
        return int(sum(len(s.keypoints) for s in list(self._samples)))

    def samples(self) -> list[FrameSample]:
        """A snapshot of the buffered samples, oldest first."""
        with self._lock:
            return list(self._samples)

    def status(self) -> dict:
        """Plain data for status messages and metrics: the model in use and the buffer."""
        cur = self._current
        return {"model": None if cur is None else dict(cur.info), "swaps": self.swaps_,
                "buffer_frames": len(self._samples), "buffer_keypoints": self.n_keypoints()}


_SLOTS: dict[str, ModelSlot] = {}
_SLOTS_LOCK = threading.Lock()


def model_slot(name: str = "default") -> ModelSlot:
    """The process's model slot called ``name`` (made on first use).

    Parameters
    ----------
    name : str, optional
        Slot name (default ``"default"``: the one the latent workflow and the daemon's
        trainer share).

    Returns
    -------
    ModelSlot
    """
    with _SLOTS_LOCK:
        if name not in _SLOTS:
            _SLOTS[name] = ModelSlot()
        return _SLOTS[name]


def model_info(model: LatentModel, rewards: dict | None = None, **extra: Any) -> dict:
    """Plain data describing ``model`` for :meth:`ModelSlot.swap` and checkpoints.

    Parameters
    ----------
    model : LatentModel
        A trained model.
    rewards : dict, optional
        Latent rewards it was selected by.
    **extra
        More plain-data fields (e.g. ``sublattice``).

    Returns
    -------
    dict
        ``id``, ``architecture``, ``rewards``, ``train_s``, ``n_patches`` and ``extra``.
    """
    clean = {k: (float(v) if isinstance(v, (int, float)) else v)
             for k, v in (rewards or {}).items()}
    return {"id": model.name, "architecture": model.config, "rewards": clean,
            "train_s": round(float(model.history_.seconds), 3),
            "n_patches": int(model.history_.n_patches), **extra}


def _check_int(value: int, name: str, low: int) -> int:
    if int(value) != value or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _seed_everything(seed: int) -> None:
    """torch (CPU and CUDA), Python and numpy's legacy global RNG, as pyro seeds them."""
    pyro.set_rng_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
