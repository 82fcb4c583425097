"""Workflows: each declares its parameters, search space, steps and rewards in one class."""

from __future__ import annotations

import importlib
import inspect

from rewardscope.workflows.base import Evaluation, FrameContext, RewardSpec, Workflow

# name -> "module:Class" (imported on first use, so a session pays only for what it runs)
WORKFLOWS = {
    "atoms": "rewardscope.workflows.atoms:AtomsWorkflow",
    "domains": "rewardscope.workflows.domains:DomainsWorkflow",
    "amorphous": "rewardscope.workflows.amorphous:AmorphousWorkflow",
    "latent": "rewardscope.workflows.latent:LatentWorkflow",
}
# what each configured `workflow` runs, in order (atoms first: the others read its atoms)
WORKFLOW_CHAINS = {
    "atoms": ("atoms",),
    "domains": ("atoms", "domains"),
    "amorphous": ("atoms", "amorphous"),
    "all": ("atoms", "domains", "amorphous"),
    "latent": ("atoms", "latent"),  # rotation-invariant VAE (pyroved iVAE) + GMM on the latent
}


def make_workflow(name: str, lattice_px: float | None = None) -> Workflow:
    """Instantiate a built-in workflow by name; workflows whose search space is set in pixels
    (a ``lattice_px`` constructor argument) get the session's lattice spacing."""
    try:
        module, _, cls_name = WORKFLOWS[name].partition(":")
    except KeyError:
        raise ValueError(f"unknown workflow '{name}'; known: {', '.join(WORKFLOWS)}") from None
    cls = getattr(importlib.import_module(module), cls_name)
    if lattice_px and "lattice_px" in inspect.signature(cls).parameters:
        wf = cls(lattice_px=float(lattice_px))
        wf.lattice_px = float(lattice_px)
        return wf
    return cls()


__all__ = ["WORKFLOWS", "WORKFLOW_CHAINS", "Evaluation", "FrameContext", "RewardSpec",
           "Workflow", "make_workflow"]
