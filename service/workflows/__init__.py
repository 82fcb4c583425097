"""Workflows: each declares its parameters, search space, rewards, needs and outputs in one class.

This module is the registry: built-in names -> ``"module:Class"`` (imported on first use, so a
session pays only for what it runs). A configuration names workflows by registry name or by a
dotted path to a user's class (``"mypkg.mod:MyWorkflow"``); see docs/WORKFLOWS.md.
"""

from __future__ import annotations

import importlib
import inspect

from rewardscope.workflows.base import (
    ATOMS,
    FIELD,
    KINDS,
    LABELS,
    MASK,
    PER_ATOM,
    PER_REGION,
    PER_WALL,
    POLYLINES,
    SCALAR,
    SEGMENTS,
    Evaluation,
    FrameContext,
    Output,
    Workflow,
)

WORKFLOWS = {
    "atoms": "rewardscope.workflows.atoms:AtomsWorkflow",
    "domains": "rewardscope.workflows.domains:DomainsWorkflow",
    "amorphous": "rewardscope.workflows.amorphous:AmorphousWorkflow",
    "latent": "rewardscope.workflows.latent:LatentWorkflow",
}
ALIASES = {"all": ("atoms", "domains", "amorphous")}
"""Configured names that stand for several workflows."""


class WorkflowLookupError(ValueError):
    """A workflow name or dotted path that cannot be resolved; the message names it."""


def workflow_class(name: str) -> type[Workflow]:
    """The class of a registered workflow or of a user's dotted path, checked before use.

    Checking at lookup (a :class:`Workflow` subclass that declares a name) makes a typo in a
    configuration fail at session start, naming it, rather than mid-frame.

    Parameters
    ----------
    name : str
        A registry name (``"atoms"``) or a dotted path (``"mypkg.mod:MyWorkflow"``).

    Returns
    -------
    type
        The :class:`Workflow` subclass.

    Raises
    ------
    WorkflowLookupError
        If ``name`` is neither registered nor a loadable ``module:Class`` path, or the object
        there is not a named Workflow subclass.
    """
    path = WORKFLOWS.get(name, name)
    module, sep, attr = path.partition(":")
    if not sep or not module or not attr:
        raise WorkflowLookupError(
            f"unknown workflow {name!r}; built-ins: {', '.join(WORKFLOWS)}, "
            f"aliases: {', '.join(ALIASES)}; a user workflow is given as 'package.module:Class'")
    try:
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise WorkflowLookupError(f"cannot load workflow {name!r}: {exc}") from exc
    if not (inspect.isclass(obj) and issubclass(obj, Workflow)):
        raise WorkflowLookupError(f"workflow {name!r} is {obj!r}, not a Workflow subclass")
    if not obj.name:
        raise WorkflowLookupError(f"workflow {name!r} declares no name")
    return obj


def make_workflow(name: str, lattice_px: float | None = None) -> Workflow:
    """Instantiate a workflow by registry name or dotted path.

    Workflows whose search space is set in pixels (a ``lattice_px`` constructor argument) get
    the session's lattice spacing.

    Parameters
    ----------
    name : str
        A registry name or a dotted path (see :func:`workflow_class`).
    lattice_px : float, optional
        The session's lattice spacing in px.

    Returns
    -------
    Workflow
        A new instance.

    Raises
    ------
    WorkflowLookupError
        As :func:`workflow_class`.
    """
    cls = workflow_class(name)
    if lattice_px and "lattice_px" in inspect.signature(cls).parameters:
        return cls(lattice_px=float(lattice_px))
    return cls()


__all__ = ["ALIASES", "ATOMS", "FIELD", "KINDS", "LABELS", "MASK", "PER_ATOM", "PER_REGION",
           "PER_WALL", "POLYLINES", "SCALAR", "SEGMENTS", "WORKFLOWS", "Evaluation",
           "FrameContext", "Output", "Workflow", "WorkflowLookupError", "make_workflow",
           "workflow_class"]
