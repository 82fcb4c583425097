"""``rewardscope keys``: write CURVE certificates."""

from __future__ import annotations

import argparse
import sys

from rewardscope.security import CurveError, write_keys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="folder for the certificates (created 0700)")
    p.add_argument("--name", action="append", dest="names", metavar="NAME",
                   help="certificate name, repeatable (default: server and client)")
    p.add_argument("--force", action="store_true", help="overwrite existing certificates")


def run(args: argparse.Namespace) -> int:
    names = tuple(args.names or ("server", "client"))
    try:
        written = write_keys(args.out, names, force=args.force)
    except (CurveError, OSError, ValueError) as exc:
        print(f"rewardscope keys: {exc}", file=sys.stderr)
        return 2
    for name, (public, secret) in written.items():
        print(f"{name}: public {public}  secret {secret}")
    print("Give the service its *.key_secret (curve_secret) and each client the server's .key; "
          "copy each client's .key into the service's curve_allow folder.")
    return 0
