"""Run a snippet in a fresh interpreter and check which heavy packages it imported.

Start-up cost is part of what rewardscope promises (a cold ``analyze``), so tests assert that
a module's import and use leave scikit-learn, scikit-optimize and scipy.stats unloaded.
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("sklearn", "skopt", "scipy.stats")
"""Packages a cold analysis must not import (~0.5 s together)."""


def run_fresh(code: str, forbidden: tuple[str, ...] = HEAVY) -> str:
    """Run ``code`` in a new interpreter, then assert none of ``forbidden`` (a package or a
    dotted module) was imported; returns its standard output."""
    check = (
        "\nimport sys as _sys\n"
        f"_bad = sorted({{k for k in _sys.modules for f in {forbidden!r}"
        " if k == f or k.startswith(f + '.')})\n"
        "assert not _bad, _bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code + check], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
