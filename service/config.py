"""Effective service configuration: defaults < environment < TOML file < command-line flags.

One flat, typed record so that every component reads the same names; the TOML file groups keys
into sections only for readability (``[service]``, ``[limits]``, ``[analysis]``,
``[security]``, ``[workflows.NAME]``). Unknown keys and wrong types are refused with a message
naming the key, because a typo silently ignored during beam time costs an experiment.

Each key is declared once, as a field of :class:`ServiceConfig` made with :func:`key`: its
default, TOML section, one-line help (with units), whether ``rewardscope serve``/``config`` take
it as a flag, whether ``ctl set`` may change it on a running service, and its allowed values.
Everything else is generated from that: :data:`KEYS`, :data:`SETTABLE`, the command-line flags
(:func:`add_flags`), validation, and the table in docs/OPERATIONS.md (:func:`markdown_table`).

This module checks syntax only; whether a ``workflow`` name resolves is for the engine to say
(it imports the workflows, which this module must not).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from rewardscope import protocol
from rewardscope.protocol import REGION_REASONS

ENV_PREFIX = "REWARDSCOPE_"
SECTIONS = ("service", "limits", "analysis", "regions", "security", "workflows")
TABLE_START = "<!-- config-table:start -->"
TABLE_END = "<!-- config-table:end -->"
NO_DEADLINE_S = 1e6
"""Both deadlines of offline work (``analyze``, ``batch``): budgets alone end each search, so a
result does not depend on how fast the machine was (e.g. on numba's cache being cold)."""

# A workflow name ("atoms"), or a dotted path to a class ("mypkg.mod:MyWorkflow").
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_WORKFLOW_REF = re.compile(rf"{_IDENT}|{_IDENT}(?:\.{_IDENT})*:{_IDENT}(?:\.{_IDENT})*")


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key."""




MOTIFS: dict[str, float] = {
    "single": 1.0,  # one column per cell (an elemental lattice, one sublattice alone)
    "perovskite-001": 2.0,  # ABO3 [001], HAADF: A and B-O columns per A-A cell (O is dark)
    "perovskite-110": 2.0,  # ABO3 [110], HAADF: A-O and B columns per a/sqrt2 x a cell
    "perovskite-001-abf": 4.0,  # ABO3 [001], ABF: A, B-O and two O columns per cell
    "perovskite-110-abf": 3.0,  # ABO3 [110], ABF: A-O, B and O columns per cell
}
"""Presets of ``motif``: visible atomic columns per unit cell of the projected intensity."""


def motif_columns(motif: str | float) -> float:
    """Visible columns per unit cell for a ``motif`` setting: a :data:`MOTIFS` preset or a
    positive number (``"2"``, ``2.5``). Raises ConfigError naming ``motif`` otherwise."""
    if isinstance(motif, str) and motif.strip().lower() in MOTIFS:
        return MOTIFS[motif.strip().lower()]
    try:
        value = float(motif)
    except (TypeError, ValueError):
        value = float("nan")
    if not (value > 0 and value < float("inf")) or isinstance(motif, bool):
        raise ConfigError(f"motif must be one of {' | '.join(MOTIFS)} or a positive number of "
                          f"columns per cell, got {motif!r}")
    return value


def key(default: Any = MISSING, *, section: str, help: str, flag: bool = False,
        live: bool = False, choices: tuple = (), minimum: float | None = None,
        maximum: float | None = None, positive: bool = False,
        default_factory: Any = MISSING) -> Any:
    """Declare one configuration key (a dataclass field carrying its metadata).

    ``section``: TOML section; ``help``: one line, units in parentheses; ``flag``: a
    ``--name`` flag of ``serve``/``config``; ``live``: ``ctl set`` may change it while running;
    ``choices``/``minimum``/``maximum``/``positive``: the values :meth:`ServiceConfig.validate`
    accepts.
    """
    if section not in SECTIONS:
        raise ValueError(f"unknown section '{section}'")
    meta = {"section": section, "help": help, "flag": flag, "live": live,
            "choices": tuple(choices), "minimum": minimum, "maximum": maximum,
            "positive": positive}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ServiceConfig:
    # [service] sockets and housekeeping
    frames: str = key(protocol.DEFAULT_FRAMES_URL, section="service", flag=True,
                      help="instrument frames URL; the service connects unless `frames_bind`")
    frames_mode: str = key("sub", section="service", flag=True, choices=("sub", "pull"),
                           help="`sub`: the instrument PUBlishes; `pull`: it PUSHes")
    frames_bind: bool = key(False, section="service",
                            help="bind the frames URL instead of connecting to the instrument")
    results: str = key(protocol.DEFAULT_RESULTS_URL, section="service", flag=True,
                       help="results PUB URL the service binds (results, status, errors)")
    control: str = key(protocol.DEFAULT_CONTROL_URL, section="service", flag=True,
                       help="control REP URL the service binds")
    metrics_port: int = key(protocol.DEFAULT_METRICS_PORT, section="service", flag=True,
                            minimum=0, maximum=65535,
                            help="Prometheus `/metrics` TCP port; 0 disables it")
    metrics_addr: str = key("127.0.0.1", section="service", flag=True,
                            help="Prometheus bind address; `0.0.0.0` lets a remote one scrape")
    store: str = key("", section="service", flag=True,
                     help="session store directory (record logs, checkpoints); empty = none")
    cluster: str = key("", section="service", flag=True,
                       help="Dask cluster for the session engines: `local:N` (N worker "
                            "processes) or a scheduler address `tcp://host:8786`; empty = "
                            "engines in the service process")
    heartbeat_s: float = key(1.0, section="service", live=True, positive=True,
                             help="interval between status messages on the results socket (s)")
    session_gap_timeout_s: float = key(60.0, section="service", live=True, positive=True,
                                       help="close a session silent this long without an "
                                            "end marker (s)")
    max_sessions: int = key(8, section="service", minimum=1,
                            help="session engines kept in memory (least recently used evicted)")
    log_format: str = key("json", section="service", flag=True, choices=("json", "text"),
                          help="stderr log lines: `json` or `text` for humans")
    log_level: str = key("INFO", section="service", flag=True,
                         help="DEBUG, INFO, WARNING or ERROR")
    # [limits] input caps (see protocol.Limits)
    max_dim: int = key(8192, section="limits", minimum=1,
                       help="largest frame side accepted (px)")
    max_pixels: int = key(8192 * 8192, section="limits", minimum=1,
                          help="largest frame area accepted (px)")
    max_message_bytes: int = key(256 * 1024 * 1024, section="limits",
                                 help="largest message accepted (bytes)")
    # [analysis] what each frame gets
    lattice_px: float = key(0.0, section="analysis", flag=True, live=True, minimum=0.0,
                            help="lattice spacing hint when neither the frame header nor the "
                                 "session start has one (px); 0 = none, found from the frame")
    lattice_constant_m: float = key(0.0, section="analysis", flag=True, live=True, minimum=0.0,
                                    help="the material's lattice constant (m): with a frame's "
                                         "pixel_size_m, a lattice hint; 0 = none")
    motif: str = key("perovskite-001", section="analysis", flag=True, live=True,
                     help="visible columns per unit cell: a preset (perovskite-001, "
                          "perovskite-110, ...) or a number")
    contrast: str = key("auto", section="analysis", flag=True, live=True,
                        choices=("auto", "bright", "dark"),
                        help="column contrast: `bright` (HAADF), `dark` (BF, ABF) or `auto` "
                             "(decided per session from the frame)")
    workflow: str | list[str] = key(
        "atoms", section="analysis", flag=True, live=True,
        help="atoms|domains|amorphous|all|latent, or a list of workflow names / "
             "`pkg.mod:Class` paths (comma-separated on the command line)")
    budget: int = key(8, section="analysis", flag=True, live=True, minimum=1,
                      help="optimizer evaluations per workflow on a warm frame")
    cold_budget: int = key(16, section="analysis", live=True, minimum=1,
                           help="optimizer evaluations per workflow on a session's first frame")
    patience: int = key(0, section="analysis", live=True, minimum=0,
                        help="end a workflow's search once this many evaluations in a row "
                             "left its answer (the knee) unchanged, after the initial design; "
                             "0 = always spend the budget")
    deadline_s: float = key(0.7, section="analysis", flag=True, live=True, positive=True,
                            help="wall-clock cap of a warm frame's search, all workflows (s)")
    cold_deadline_s: float = key(6.0, section="analysis", live=True, positive=True,
                                 help="wall-clock cap of a session's first frame (s)")
    eval_workers: int = key(0, section="analysis", live=True, minimum=0,
                            help="candidates of one workflow evaluated at once (threads); "
                                 "0 = min(2, CPU cores)")
    seed: int = key(0, section="analysis", live=True, help="optimizer random seed")
    knee: str = key("euclidean", section="analysis", live=True,
                    choices=("euclidean", "chebyshev"),
                    help="distance that picks the knee of the Pareto front")
    # latent workflow's slow loop (service/live/trainer.py), read when `latent` is in the chain
    latent_train: bool = key(True, section="analysis",
                             help="train latent models in the background (slow loop)")
    latent_checkpoint: str = key("", section="analysis",
                                 help="model-in-use checkpoint file; empty = "
                                      "`<store>/latent-model.pt` (none without a store)")
    latent_round_s: float = key(60.0, section="analysis", positive=True,
                                help="time budget of one model-search round (s)")
    latent_candidates: int = key(6, section="analysis", minimum=1,
                                 help="candidate models trained per search round")
    latent_epochs: int = key(30, section="analysis", minimum=1,
                             help="training epochs per candidate (fewer when the round's "
                                  "budget runs out)")
    latent_hidden: int = key(64, section="analysis", minimum=2,
                             help="hidden layer width of encoder and decoder")
    latent_sublattice: str = key("all", section="analysis", choices=("all", "A", "B"),
                                 help="atoms encoded: `all`, or one sublattice (`A`, `B`)")
    latent_max_train: int = key(4096, section="analysis", minimum=16,
                                help="patches per candidate training (a seeded sample)")
    latent_min_patches: int = key(256, section="analysis", minimum=16,
                                  help="key points buffered before the first round")
    latent_buffer_frames: int = key(8, section="analysis", minimum=1,
                                    help="frames kept in the training buffer")
    latent_buffer_patches: int = key(20000, section="analysis", minimum=16,
                                     help="key points kept in the training buffer")
    latent_collapse_log10: float = key(-2.0, section="analysis",
                                       help="reject a candidate whose log10 product of latent "
                                            "variances per dimension is below this")
    latent_gpu_memory_frac: float = key(0.25, section="analysis", positive=True, maximum=1.0,
                                        help="share of the GPU's memory torch may use")
    # [regions] recommended regions of interest (service/engine/regions.py)
    regions_mode: str = key("auto", section="regions", live=True,
                            choices=("auto", "approve", "off"),
                            help="suggested regions: `auto` releases each frame's top one as a "
                                 "scan, `approve` waits for `ctl approve`, `off` suggests none")
    regions_max: int = key(3, section="regions", live=True, minimum=0,
                           help="suggestions per frame at most")
    regions_min_px: float = key(0.0, section="regions", live=True, minimum=0.0,
                                help="smallest side of a suggested box (px); 0 = one lattice "
                                     "spacing")
    regions_weights: dict[str, float] = key(
        section="regions", live=True, default_factory=lambda: dict.fromkeys(REGION_REASONS, 1.0),
        help="score weight per reason (see docs/PROTOCOL.md: wall, domain, amorphous, ...); "
             "`ctl set regions_weights=wall:2,amorphous:1`, reasons not named keep 1")
    regions_penalty_radius: float = key(3.0, section="regions", live=True, positive=True,
                                        help="radius of the visited-place penalty (lattice "
                                             "spacings; in metres through the pixel size)")
    regions_expiry_s: float = key(60.0, section="regions", live=True, positive=True,
                                  help="a pending suggestion not approved this long expires (s)")
    rewards: dict = key(section="workflows", default_factory=dict,
                        help="objectives per workflow: `[workflows.NAME] rewards = [...]`, "
                             "built-ins or `pkg.mod:function`")
    # [security]
    allow_insecure_bind: bool = key(False, section="security", flag=True,
                                    help="permit binding beyond loopback without CURVE")
    curve_secret: str = key("", section="security", flag=True,
                            help="server secret certificate file (enables CURVE)")
    curve_allow: str = key("", section="security", flag=True,
                           help="folder of authorised client public certificates")
    curve_instrument_public: str = key("", section="security", flag=True,
                                       help="instrument's public certificate (CURVE on a "
                                            "connected frames socket)")

    def limits(self) -> protocol.Limits:
        return protocol.Limits(max_message_bytes=self.max_message_bytes, max_dim=self.max_dim,
                               max_pixels=self.max_pixels)

    def workers(self) -> int:
        """Evaluation threads: ``eval_workers``, or for 0 two when the host has two cores
        (measured: two concurrent domain evaluations take 0.6x the time of two in a row;
        more threads mostly contend for the GIL in the mixture fits)."""
        return self.eval_workers or min(2, os.cpu_count() or 1)

    def workflow_names(self) -> list[str]:
        """``workflow`` as a list: ``"all"`` -> ``["all"]``, a list stays as it is."""
        return [self.workflow] if isinstance(self.workflow, str) else list(self.workflow)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def updated(self, values: dict[str, Any], source: str = "override") -> ServiceConfig:
        """A copy with ``values`` applied, each validated and coerced; raises ConfigError."""
        new = dataclasses.replace(self)
        for name, raw in values.items():
            if raw is None:
                continue
            if name not in KEYS:
                raise ConfigError(f"{source}: unknown configuration key '{name}'"
                                  f"{_did_you_mean(name)}")
            setattr(new, name, KEYS[name].coerce(raw, source))
        new.validate()
        return new

    def updated_live(self, values: dict[str, Any], source: str = "set") -> ServiceConfig:
        """:meth:`updated` for a running service: refuses keys not in :data:`SETTABLE`."""
        bad = sorted(k for k in values if k not in SETTABLE)
        if bad:
            raise ConfigError(f"cannot set {', '.join(bad)} live; settable: "
                              f"{', '.join(SETTABLE)}")
        return self.updated(values, source=source)

    def validate(self) -> None:
        for k in KEYS.values():
            k.check(getattr(self, k.name))
        motif_columns(self.motif)

    def columns_per_cell(self) -> float:
        """``motif`` as the number of visible columns per unit cell (see :data:`MOTIFS`)."""
        return motif_columns(self.motif)


@dataclass(frozen=True)
class Key:
    """One configuration key, as declared on :class:`ServiceConfig`."""

    name: str
    kind: str  # "bool" | "int" | "float" | "str" | "dict" | "names" | "weights"
    default: Any
    section: str
    help: str
    flag: bool
    live: bool
    choices: tuple
    minimum: float | None
    maximum: float | None
    positive: bool

    @property
    def option(self) -> str:
        """The command-line flag, ``--lattice-px``."""
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    def coerce(self, raw: Any, source: str) -> Any:
        """``raw`` (from TOML, the environment, a flag or ``ctl set``) as this key's type."""
        try:
            return _COERCE[self.kind](raw)
        except (TypeError, ValueError) as exc:
            want = {"names": "a name, a 'module:Class' path or a list of them",
                    "weights": "reason:weight pairs"}.get(
                self.kind, self.kind)
            why = f" ({exc})" if isinstance(exc, _NameError) else ""
            raise ConfigError(f"{source}: '{self.name}' must be {want}, got {raw!r}{why}"
                              ) from None

    def check(self, value: Any) -> None:
        """Raise ConfigError when ``value`` is outside the declared range or choices."""
        if self.choices and value not in self.choices:
            raise ConfigError(f"{self.name} must be one of {' | '.join(self.choices)}, got "
                              f"{value!r}")
        if self.positive and not value > 0:
            raise ConfigError(f"{self.name} must be positive, got {value}")
        if self.minimum is not None and self.maximum is not None:
            if not self.minimum <= value <= self.maximum:
                raise ConfigError(f"{self.name} must be {self.minimum}..{self.maximum}, got "
                                  f"{value}")
        elif self.minimum is not None and value < self.minimum:
            raise ConfigError(f"{self.name} must be >= {self.minimum}, got {value}")
        elif self.maximum is not None and value > self.maximum:
            raise ConfigError(f"{self.name} must be <= {self.maximum}, got {value}")


class _NameError(ValueError):
    pass


def _bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.lower() in ("1", "true", "yes", "on", "0", "false", "no",
                                                "off"):
        return raw.lower() in ("1", "true", "yes", "on")
    raise ValueError(raw)


def _number(typ: type) -> Any:
    def conv(raw: Any) -> Any:
        if isinstance(raw, bool):
            raise ValueError(raw)
        if typ is int and isinstance(raw, float) and not raw.is_integer():
            raise ValueError(raw)
        return typ(raw)
    return conv


def _dict(raw: Any) -> dict:
    if not isinstance(raw, dict):
        raise ValueError(raw)
    return raw


def _weights(raw: Any) -> dict[str, float]:
    """``regions_weights``: a table or ``"wall:2,amorphous:1"`` (flags, environment,
    ``ctl set``); reasons not named keep weight 1. Weights are finite and >= 0."""
    if isinstance(raw, str):
        pairs = []
        for item in (i.strip() for i in raw.split(",")):
            name, sep, value = item.partition(":")
            if not sep:
                raise _NameError(f"{item!r} is not reason:weight")
            pairs.append((name.strip(), value.strip()))
    elif isinstance(raw, dict):
        pairs = list(raw.items())
    else:
        raise ValueError(raw)
    out = dict.fromkeys(REGION_REASONS, 1.0)
    for name, value in pairs:
        if name not in REGION_REASONS:
            raise _NameError(f"unknown reason {name!r}; known: {', '.join(REGION_REASONS)}")
        if isinstance(value, bool):
            raise _NameError(f"weight of {name!r} is not a number")
        try:
            w = float(value)
        except (TypeError, ValueError):
            raise _NameError(f"weight of {name!r} is not a number") from None
        if not 0.0 <= w < float("inf"):
            raise _NameError(f"weight of {name!r} must be finite and >= 0")
        out[name] = w
    return out


def _names(raw: Any) -> str | list[str]:
    """A workflow reference or a list of them; ``"a,b"`` (flags, environment, ``ctl set``)
    becomes ``["a", "b"]``. Syntax only: the engine checks that the names resolve."""
    if isinstance(raw, str):
        items = [s.strip() for s in raw.split(",")] if "," in raw else [raw.strip()]
        single = "," not in raw
    elif isinstance(raw, (list, tuple)):
        items, single = list(raw), False
        if not items:
            raise _NameError("the list is empty")
    else:
        raise ValueError(raw)
    for item in items:
        if not isinstance(item, str):
            raise _NameError(f"{item!r} is not a string")
        if not _WORKFLOW_REF.fullmatch(item):
            raise _NameError(f"{item!r} is neither a name nor 'package.module:Class'")
    return items[0] if single else items


_COERCE = {"bool": _bool, "int": _number(int), "float": _number(float), "str": _number(str),
           "dict": _dict, "names": _names, "weights": _weights}
_KINDS = {bool: "bool", int: "int", float: "float", str: "str", dict: "dict",
          str | list[str]: "names", dict[str, float]: "weights"}


def _declared_keys() -> dict[str, Key]:
    hints = typing.get_type_hints(ServiceConfig)
    out = {}
    for f in dataclasses.fields(ServiceConfig):
        m = f.metadata
        default = f.default_factory() if f.default is MISSING else f.default
        out[f.name] = Key(name=f.name, kind=_KINDS[hints[f.name]], default=default,
                          section=m["section"], help=m["help"], flag=m["flag"], live=m["live"],
                          choices=m["choices"], minimum=m["minimum"], maximum=m["maximum"],
                          positive=m["positive"])
    return out


KEYS: dict[str, Key] = _declared_keys()
"""Every key, in declaration order."""
SETTABLE: tuple[str, ...] = tuple(k.name for k in KEYS.values() if k.live)
"""Keys ``ctl set`` may change on a running service."""
FLAG_KEYS: tuple[str, ...] = tuple(k.name for k in KEYS.values() if k.flag)
"""Keys that are command-line flags of ``rewardscope serve`` and ``rewardscope config``."""


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name, KEYS, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


# ----------------------------------------------------------------------------- command line

def add_flags(p: argparse.ArgumentParser) -> None:
    """One ``--flag`` per key declared ``flag=True``; every default is None, meaning 'not
    given', so the TOML file and the environment keep their say."""
    for k in KEYS.values():
        if not k.flag:
            continue
        text = f"{k.help} [{_default_text(k)}]".replace("%", "%%").replace("`", "")
        if k.kind == "bool":
            p.add_argument(k.option, dest=k.name, action=argparse.BooleanOptionalAction,
                           default=None, help=text)
            continue
        kwargs: dict[str, Any] = {"dest": k.name, "default": None, "help": text}
        if k.choices:
            kwargs["choices"] = k.choices
        if k.kind in ("int", "float"):
            kwargs["type"] = int if k.kind == "int" else float
        p.add_argument(k.option, **kwargs)


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The keys given as flags (absent ones are None and ignored by :meth:`updated`)."""
    return {name: getattr(args, name, None) for name in FLAG_KEYS}


# ----------------------------------------------------------------------------- sources

def from_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """``REWARDSCOPE_FRAMES=tcp://...`` style overrides (key upper-cased)."""
    env = os.environ if env is None else env
    out = {}
    for k, v in env.items():
        if k.startswith(ENV_PREFIX):
            name = k[len(ENV_PREFIX):].lower()
            if name in KEYS:
                out[name] = v
    return out


def from_toml(path: str | Path) -> dict[str, Any]:
    """Flatten the TOML sections into one key space; refuse unknown sections and keys.

    A known key in another section than its own is accepted (the key space is flat);
    ``[workflows.NAME] rewards = [...]`` becomes ``rewards = {NAME: [...]}``.
    """
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML ({exc})") from None
    flat: dict[str, Any] = {}
    for name, value in data.items():
        if name == "workflows" and isinstance(value, dict):
            flat["rewards"] = {wf: (v.get("rewards") if isinstance(v, dict) else v)
                               for wf, v in value.items()}
        elif name in SECTIONS and isinstance(value, dict):
            for k in value:
                if k not in KEYS:
                    raise ConfigError(f"{p}: unknown configuration key '{k}' in [{name}]"
                                      f"{_did_you_mean(k)}")
            flat.update(value)
        elif isinstance(value, dict):
            raise ConfigError(f"{p}: unknown section [{name}] (known: {', '.join(SECTIONS)})")
        else:
            flat[name] = value
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


# ----------------------------------------------------------------------------- documentation

def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return repr(v)


def _default_text(k: Key) -> str:
    return f"default {_toml_value(k.default)}"


def markdown_table() -> str:
    """The table of keys for docs/OPERATIONS.md (between TABLE_START and TABLE_END)."""
    rows = ["| key | section | type | default | flag | `ctl set` | meaning |",
            "|---|---|---|---|---|---|---|"]
    for k in KEYS.values():
        typ = {"names": "string or list", "dict": "table", "weights": "table"}.get(k.kind,
                                                                                   k.kind)
        if k.choices:
            typ = " \\| ".join(f"`{c}`" for c in k.choices)
        section = "workflows.NAME" if k.section == "workflows" else k.section
        flag = f"`{k.option}`" if k.flag else ""
        live = "yes" if k.live else ""
        meaning = k.help.replace("|", "\\|")
        rows.append(f"| `{k.name}` | `[{section}]` | {typ} | `{_toml_value(k.default)}` | "
                    f"{flag} | {live} | {meaning} |")
    return "\n".join(rows) + "\n"


def replace_table(text: str, table: str | None = None) -> str:
    """``text`` with the part between the config-table markers replaced by the table."""
    start, end = text.find(TABLE_START), text.find(TABLE_END)
    if start < 0 or end < start:
        raise ValueError(f"no {TABLE_START} ... {TABLE_END} markers")
    head = text[:start + len(TABLE_START)]
    return f"{head}\n{table or markdown_table()}{text[end:]}"
