"""``rewardscope serve`` and ``rewardscope config``: flags override the TOML, which overrides the
environment, which overrides the defaults."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from rewardscope import config, logs
from rewardscope.workflows import WORKFLOW_CHAINS

# flag -> config key
FLAGS = {
    "frames": "frames", "frames_mode": "frames_mode", "results": "results",
    "control": "control", "metrics_port": "metrics_port", "metrics_addr": "metrics_addr",
    "lattice_px": "lattice_px", "store": "store", "workflow": "workflow", "budget": "budget",
    "deadline_s": "deadline_s", "curve_secret": "curve_secret", "curve_allow": "curve_allow",
    "curve_instrument_public": "curve_instrument_public",
    "log_format": "log_format", "log_level": "log_level",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML file (sections [service], [limits], [analysis])")
    p.add_argument("--frames", help="instrument frames URL (default tcp://127.0.0.1:5555)")
    p.add_argument("--frames-mode", choices=("sub", "pull"), help="SUB (default) or PULL")
    p.add_argument("--results", help="results PUB bind URL (default tcp://127.0.0.1:5556)")
    p.add_argument("--control", help="control REP bind URL (default tcp://127.0.0.1:5557)")
    p.add_argument("--metrics-port", type=int, help="Prometheus port (default 9108, 0 = off)")
    p.add_argument("--metrics-addr", help="Prometheus bind address (default 127.0.0.1)")
    p.add_argument("--lattice-px", type=float, help="expected lattice spacing in pixels")
    p.add_argument("--store", help="session store directory (record logs, checkpoints)")
    p.add_argument("--workflow", choices=tuple(WORKFLOW_CHAINS))
    p.add_argument("--budget", type=int, help="optimizer evaluations per warm frame")
    p.add_argument("--deadline-s", type=float, help="wall-clock cap per frame search")
    p.add_argument("--curve-secret", help="server secret certificate (enables CURVE)")
    p.add_argument("--curve-allow", help="folder of authorised client public certificates")
    p.add_argument("--curve-instrument-public",
                   help="instrument's public certificate (CURVE on a connected frames socket)")
    p.add_argument("--allow-insecure-bind", action="store_true", default=None,
                   help="permit binding beyond loopback without CURVE")
    p.add_argument("--log-format", choices=("json", "text"))
    p.add_argument("--log-level")


def effective_config(args: argparse.Namespace) -> config.ServiceConfig:
    overrides = {key: getattr(args, flag, None) for flag, key in FLAGS.items()}
    overrides["allow_insecure_bind"] = getattr(args, "allow_insecure_bind", None)
    return config.load(getattr(args, "config", None), overrides)


def run(args: argparse.Namespace) -> int:
    from rewardscope.live.daemon import Daemon  # heavy imports only when serving

    try:
        cfg = effective_config(args)
    except config.ConfigError as exc:
        print(f"rewardscope serve: {exc}", file=sys.stderr)
        return 2
    logs.setup(cfg.log_level, cfg.log_format)
    try:
        daemon = Daemon(cfg)
        daemon.start()
    except config.ConfigError as exc:
        logging.getLogger("rewardscope").error(str(exc))
        return 2
    daemon.install_signal_handlers()
    return daemon.run()


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    add_arguments(p)


def run_config(args: argparse.Namespace) -> int:
    try:
        cfg = effective_config(args)
    except config.ConfigError as exc:
        print(f"rewardscope config: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
    return 0
