"""Effective service configuration: defaults < environment < TOML file < command-line flags.

One flat, typed record so that every component reads the same names; the TOML file groups keys
into sections only for readability (``[service]``, ``[limits]``, ``[analysis]``). Unknown keys and
wrong types are refused with a message naming the key, because a typo silently ignored during
beam time costs an experiment.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from rewardscope import protocol

ENV_PREFIX = "REWARDSCOPE_"
SECTIONS = ("service", "limits", "analysis", "security", "workflows")


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key."""


@dataclass
class ServiceConfig:
    # [service] sockets and housekeeping
    frames: str = protocol.DEFAULT_FRAMES_URL
    frames_mode: str = "sub"  # "sub" (instrument PUBlishes) or "pull" (instrument PUSHes)
    frames_bind: bool = False  # connect to the instrument by default
    results: str = protocol.DEFAULT_RESULTS_URL
    control: str = protocol.DEFAULT_CONTROL_URL
    metrics_port: int = protocol.DEFAULT_METRICS_PORT  # 0 disables the HTTP endpoint
    metrics_addr: str = "127.0.0.1"
    store: str = ""  # session store directory; empty = do not store
    heartbeat_s: float = 1.0
    session_gap_timeout_s: float = 60.0  # close a session that went silent without an end
    max_sessions: int = 8  # engines kept in memory at once (least recently used evicted)
    log_format: str = "json"  # "json" or "text"
    log_level: str = "INFO"
    # [limits] input caps (see protocol.Limits)
    max_dim: int = 8192
    max_pixels: int = 8192 * 8192
    max_message_bytes: int = 256 * 1024 * 1024
    # [analysis] what each frame gets
    lattice_px: float = 12.0  # expected lattice spacing when the frame header has none
    workflow: str = "atoms"  # atoms | domains | amorphous | all | latent
    budget: int = 8  # optimizer evaluations per warm frame
    cold_budget: int = 16  # evaluations on a session's first frame
    deadline_s: float = 0.7  # wall-clock cap on a warm frame's search (all workflows)
    cold_deadline_s: float = 6.0  # ... on a session's first frame, which has no prior
    eval_workers: int = 0  # candidates evaluated at once (threads); 0 = min(2, CPU cores)
    seed: int = 0
    knee: str = "euclidean"  # or "chebyshev"
    rewards: dict = field(default_factory=dict)  # per-workflow reward lists (dotted paths ok)
    # [security]
    allow_insecure_bind: bool = False
    curve_secret: str = ""
    curve_allow: str = ""
    curve_instrument_public: str = ""  # the instrument's public cert, for a connected frames socket

    def limits(self) -> protocol.Limits:
        return protocol.Limits(max_message_bytes=self.max_message_bytes, max_dim=self.max_dim,
                               max_pixels=self.max_pixels)

    def workers(self) -> int:
        """Evaluation threads: ``eval_workers``, or for 0 two when the host has two cores
        (measured: two concurrent domain evaluations take 0.6x the time of two in a row;
        more threads mostly contend for the GIL in the mixture fits)."""
        return self.eval_workers or min(2, os.cpu_count() or 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def updated(self, values: dict[str, Any], source: str = "override") -> ServiceConfig:
        """A copy with ``values`` applied, each validated and coerced; raises ConfigError."""
        new = dataclasses.replace(self)
        fields = {f.name: f for f in dataclasses.fields(self)}
        for key, raw in values.items():
            if raw is None:
                continue
            if key not in fields:
                raise ConfigError(f"{source}: unknown configuration key '{key}'")
            setattr(new, key, _coerce(key, raw, type(getattr(self, key)), source))
        new.validate()
        return new

    def validate(self) -> None:
        if self.frames_mode not in ("sub", "pull"):
            raise ConfigError(f"frames_mode must be 'sub' or 'pull', got '{self.frames_mode}'")
        from rewardscope.workflows import WORKFLOW_CHAINS

        if self.workflow not in WORKFLOW_CHAINS:
            raise ConfigError(f"workflow must be one of {'|'.join(WORKFLOW_CHAINS)}, got "
                              f"'{self.workflow}'")
        if self.knee not in ("euclidean", "chebyshev"):
            raise ConfigError(f"knee must be 'euclidean' or 'chebyshev', got '{self.knee}'")
        for key in ("lattice_px", "heartbeat_s", "deadline_s", "cold_deadline_s",
                    "session_gap_timeout_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be positive, got {getattr(self, key)}")
        for key in ("budget", "cold_budget", "max_sessions", "max_dim", "max_pixels"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.eval_workers < 0:
            raise ConfigError(f"eval_workers must be >= 0 (0 = auto), got {self.eval_workers}")
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics_port must be 0..65535, got {self.metrics_port}")


def _coerce(key: str, raw: Any, typ: type, source: str) -> Any:
    try:
        if typ is bool:
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.lower() in ("1", "true", "yes", "on", "0", "false",
                                                        "no", "off"):
                return raw.lower() in ("1", "true", "yes", "on")
            raise ValueError(raw)
        if typ is dict:
            if not isinstance(raw, dict):
                raise ValueError(raw)
            return raw
        if typ is int and isinstance(raw, float) and not raw.is_integer():
            raise ValueError(raw)
        if isinstance(raw, bool) and typ is not bool:
            raise ValueError(raw)
        return typ(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: '{key}' must be {typ.__name__}, got {raw!r}") from None


def from_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """``REWARDSCOPE_FRAMES=tcp://...`` style overrides (key upper-cased)."""
    env = os.environ if env is None else env
    names = {f.name for f in dataclasses.fields(ServiceConfig)}
    out = {}
    for k, v in env.items():
        if k.startswith(ENV_PREFIX):
            key = k[len(ENV_PREFIX):].lower()
            if key in names:
                out[key] = v
    return out


def from_toml(path: str | Path) -> dict[str, Any]:
    """Flatten the TOML sections into one key space; refuse unknown sections and keys."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML ({exc})") from None
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key == "workflows" and isinstance(value, dict):
            flat["rewards"] = {wf: (v.get("rewards") if isinstance(v, dict) else v)
                               for wf, v in value.items()}
        elif key in SECTIONS and isinstance(value, dict):
            flat.update(value)
        elif isinstance(value, dict):
            raise ConfigError(f"{p}: unknown section [{key}] (known: {', '.join(SECTIONS)})")
        else:
            flat[key] = value
    return flat


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
         env: dict[str, str] | None = None) -> ServiceConfig:
    """Build the effective config: defaults, then environment, then TOML, then ``overrides``."""
    cfg = ServiceConfig()
    cfg = cfg.updated(from_environment(env), source="environment")
    if path:
        cfg = cfg.updated(from_toml(path), source=str(path))
    if overrides:
        cfg = cfg.updated(overrides, source="command line")
    return cfg
