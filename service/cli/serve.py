"""``rewardscope serve`` and ``rewardscope config``: flags override the TOML, which overrides the
environment, which overrides the defaults.

The flags are generated from the keys declared on :class:`rewardscope.config.ServiceConfig`
(those with ``flag=True``); add a key there, not here.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from rewardscope import config, logs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML file (sections [service], [limits], [analysis], "
                                    "[security], [workflows.NAME])")
    config.add_flags(p)


def effective_config(args: argparse.Namespace) -> config.ServiceConfig:
    return config.load(getattr(args, "config", None), config.flag_values(args))


def check_settings(cfg: config.ServiceConfig) -> None:
    """The engine's check that the configured workflows and rewards resolve (raises
    ConfigError); skipped when the engine does not offer one."""
    from rewardscope import engine  # imports the workflows: only once a config is built

    check = getattr(engine, "check_settings", None)
    if check is not None:
        check(cfg)


def run(args: argparse.Namespace) -> int:
    from rewardscope.live.daemon import Daemon  # heavy imports only when serving

    try:
        cfg = effective_config(args)
        check_settings(cfg)
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
    p.add_argument("--markdown", action="store_true",
                   help="print the table of configuration keys (docs/OPERATIONS.md) and exit")


def run_config(args: argparse.Namespace) -> int:
    if getattr(args, "markdown", False):
        sys.stdout.write(config.markdown_table())
        return 0
    try:
        cfg = effective_config(args)
        check_settings(cfg)
    except config.ConfigError as exc:
        print(f"rewardscope config: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
    return 0
