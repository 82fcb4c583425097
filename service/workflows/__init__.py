"""Workflows: each declares its parameters, search space, steps and rewards in one class."""

from __future__ import annotations

import importlib

from .base import Evaluation, FrameContext, RewardSpec, Workflow

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


def make_workflow(name: str) -> Workflow:
    """Instantiate a built-in workflow by name."""
    try:
        module, _, cls = WORKFLOWS[name].partition(":")
    except KeyError:
        raise ValueError(f"unknown workflow '{name}'; known: {', '.join(WORKFLOWS)}") from None
    return getattr(importlib.import_module(module), cls)()


__all__ = ["WORKFLOWS", "WORKFLOW_CHAINS", "Evaluation", "FrameContext", "RewardSpec",
           "Workflow", "make_workflow"]
