"""``rewardscope bench [NAME ...]``: the benchmarks in the checkout's ``benchmarks/`` folder.

Benchmarks are not installed with the package (they compare against baselines such as
skimage's blob_log and skopt's default optimizer); this command finds the folder beside the
source tree of an editable install and runs ``python -m benchmarks`` there.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def checkout_root() -> Path | None:
    root = Path(__file__).resolve().parents[2]  # service/cli/bench.py -> the checkout
    return root if (root / "benchmarks" / "__main__.py").exists() else None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*",
                   help="benchmark names (default: all), e.g. log optimizer quality; options "
                        "after -- go to the benchmark: quality -- --quick")


def run(args: argparse.Namespace) -> int:
    root = checkout_root()
    if root is None:
        print("benchmarks/ not found: run from a source checkout (pip install -e .)",
              file=sys.stderr)
        return 2
    # argparse hands what follows "--" to ``names``: the first option starts the benchmark's own
    # arguments, which ``python -m benchmarks`` takes after its own "--".
    names = list(args.names)
    cut = next((i for i, n in enumerate(names) if n.startswith("-")), len(names))
    extra = ["--", *names[cut:]] if cut < len(names) else []
    return subprocess.call([sys.executable, "-m", "benchmarks", *names[:cut], *extra], cwd=root)
