"""``rewardscope export``: a stored session to an HDF5 file HyperSpy opens."""

from __future__ import annotations

import argparse
import os
import sys

from rewardscope.storage.hdf5 import export_session
from rewardscope.storage.recordlog import RecordFormatError
from rewardscope.storage.sessions import list_sessions


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("session", nargs="?",
                   help="session name (looked up in --store) or path to a session folder")
    p.add_argument("--to", dest="out", metavar="FILE.h5", help="HDF5 file to write")
    p.add_argument("--store", default=os.environ.get("REWARDSCOPE_STORE") or "store",
                   help="session store directory (default: $REWARDSCOPE_STORE or ./store)")
    p.add_argument("--force", action="store_true", help="replace FILE.h5 if it exists")
    p.add_argument("--compress", action="store_true", help="gzip frames (smaller, slower)")
    p.add_argument("--list", action="store_true", help="list the sessions in --store and exit")


def run(args: argparse.Namespace) -> int:
    if args.list:
        for name, path in list_sessions(args.store):
            print(f"{name}\t{path}")
        return 0
    if not args.session or not args.out:
        print("rewardscope export: need SESSION and --to FILE.h5 (or --list)", file=sys.stderr)
        return 2
    try:
        rep = export_session(args.session, args.out, args.store, overwrite=args.force,
                             compression="gzip" if args.compress else None)
    except (OSError, RecordFormatError) as exc:
        print(f"rewardscope export: {exc}", file=sys.stderr)
        return 1
    print(f"exported {rep.n_frames} frames ({rep.n_results} with results, frames as "
          f"{rep.frames_layout}) of session {rep.session!r} to {rep.path}")
    for log, tail in (("frames", rep.frames_tail), ("results", rep.results_tail)):
        if tail:
            print(f"note: {log} log ends in a damaged record ({tail}); exported what precedes it")
    if rep.orphan_results:
        print(f"note: {rep.orphan_results} results had no stored frame and were left out")
    return 0
