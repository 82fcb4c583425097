"""``rewardscope import``: still images into a replayable session."""

from __future__ import annotations

import argparse
import logging
import sys

from rewardscope.storage.stills import SUPPORTED_EXTS, ImageFormatError, import_images

log = logging.getLogger("rewardscope.import")

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``rewardscope import IMAGE... --out FILE.rsrec [--session NAME] [--lattice-px A]``."""
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help=f"image files ({', '.join(SUPPORTED_EXTS)}); stacks give n frames")
    parser.add_argument("--out", required=True, metavar="FILE", help="record log to write")
    parser.add_argument("--session", default=None, help="session name (default: from file)")
    parser.add_argument("--lattice-px", type=float, default=None, metavar="A",
                        help="expected lattice spacing in pixels, sent with every frame")
    parser.add_argument("--interval", type=float, default=1.0, metavar="S",
                        help="seconds between frames when replayed at speed 1 (default 1)")
    parser.add_argument("--pixel-size-m", type=float, default=None, metavar="M",
                        help="pixel size in metres, overriding the files")


def run(args: argparse.Namespace) -> int:
    try:
        n = import_images(args.images, args.out, args.session, args.lattice_px,
                          interval_s=args.interval, pixel_size_m=args.pixel_size_m)
    except (ImageFormatError, OSError) as exc:
        log.error("import failed: %s", exc)
        print(f"rewardscope import: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {n - 2} frames ({n} messages) to {args.out}")
    return 0

