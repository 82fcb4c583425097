"""Run every ``bench_*.py`` module's ``main()`` in this package, or the ones named in argv.

``python -m benchmarks`` runs all (but ``suite``, which calls the others); ``python -m
benchmarks log`` (or ``bench_log``) runs one, passing any further arguments after ``--`` to its
``main(argv)``. ``python -m benchmarks suite`` (``make bench``) runs every comparison in one go
and writes ``benchmarks/results/<date>.md`` and ``.json``.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

PREFIX = "bench_"
NOT_IN_ALL = {"bench_suite"}  # runs the others itself


def available() -> list[str]:
    """Names of the bench modules in this package, sorted."""
    here = str(Path(__file__).resolve().parent)
    return sorted(m.name for m in pkgutil.iter_modules([here]) if m.name.startswith(PREFIX))


def _resolve(name: str, names: list[str]) -> str:
    mod = name if name.startswith(PREFIX) else PREFIX + name
    mod = mod.removesuffix(".py")
    if mod not in names:
        raise SystemExit(f"unknown benchmark {name!r}; available: {', '.join(names)}")
    return mod


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    names = available()
    chosen = [_resolve(a, names) for a in argv] or [n for n in names if n not in NOT_IN_ALL]
    status = 0
    for mod in chosen:
        print(f"== {mod} ==", flush=True)
        rc = importlib.import_module(f"{__package__ or 'benchmarks'}.{mod}").main(extra)
        status = status or int(rc or 0)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
