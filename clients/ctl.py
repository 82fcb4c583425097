"""``rewardscope ctl CMD [key=value ...]``: steer a running service from a terminal."""

from __future__ import annotations

import argparse
import json

from rewardscope import protocol
from rewardscope.clients.client import ControlClient


def _value(text: str):
    """Parse ``12``, ``0.5``, ``true`` or a bare string, as a user would type them."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("cmd", choices=protocol.CONTROL_COMMANDS)
    p.add_argument("values", nargs="*", metavar="KEY=VALUE", help="for 'set', e.g. budget=12")
    p.add_argument("--control", default=protocol.DEFAULT_CONTROL_URL)
    p.add_argument("--timeout", type=float, default=5.0)


def run(args: argparse.Namespace) -> int:
    values = {}
    for item in args.values:
        key, sep, val = item.partition("=")
        if not sep:
            raise SystemExit(f"expected KEY=VALUE, got {item!r}")
        values[key] = val if key in ("id", "session") else _value(val)  # ids stay strings
    client = ControlClient(args.control, timeout_s=args.timeout)
    try:
        reply = client.call(args.cmd, **values)
    except TimeoutError as exc:
        print(exc)
        return 1
    finally:
        client.close()
    print(json.dumps(reply, indent=2, default=str))
    return 0 if reply.get("ok") else 1
