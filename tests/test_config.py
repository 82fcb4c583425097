"""Configuration: one declaration per key, and everything generated from it (flags, live-settable
keys, validation, the docs table), plus precedence and the ``workflow`` key's syntax."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rewardscope import config
from rewardscope.cli import main as cli_main
from rewardscope.cli import serve

ROOT = Path(__file__).resolve().parents[1]
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"


def _parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    serve.add_arguments(p)
    return p.parse_args(list(argv))


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- declarations

def test_every_field_is_declared_once_with_metadata():
    names = [f.name for f in dataclasses.fields(config.ServiceConfig)]
    assert list(config.KEYS) == names
    for k in config.KEYS.values():
        assert k.section in config.SECTIONS, k.name
        assert k.help and "\n" not in k.help and len(k.help) < 160, k.name
        assert k.kind in ("bool", "int", "float", "str", "dict", "names", "weights"), k.name
        assert k.default == getattr(config.ServiceConfig(), k.name)
        if k.choices:
            assert k.default in k.choices, k.name
    assert config.KEYS["lattice_px"].option == "--lattice-px"
    assert config.KEYS["workflow"].kind == "names"


def test_settable_keys_come_from_the_declarations():
    assert set(config.SETTABLE) == {"lattice_px", "budget", "cold_budget", "patience", "deadline_s",
                                    "cold_deadline_s", "eval_workers", "workflow", "knee",
                                    "seed", "heartbeat_s", "session_gap_timeout_s",
                                    "lattice_constant_m", "motif", "contrast",
                                    "regions_mode", "regions_max", "regions_min_px",
                                    "regions_weights", "regions_penalty_radius",
                                    "regions_expiry_s"}
    import rewardscope.live.daemon as daemon

    assert not hasattr(daemon, "SETTABLE"), "the daemon must use config.SETTABLE"
    cfg = config.ServiceConfig()
    assert cfg.updated_live({"budget": 3}).budget == 3
    with pytest.raises(config.ConfigError) as info:
        cfg.updated_live({"frames": "tcp://1.2.3.4:1", "budget": 3})
    msg = str(info.value)
    assert "cannot set frames live" in msg and "settable: " in msg
    assert all(name in msg for name in config.SETTABLE)
    with pytest.raises(config.ConfigError, match="lattice_px must be >= 0"):
        cfg.updated_live({"lattice_px": -1})  # 0 = no hint: the lattice is found in the frame


def test_config_does_not_import_the_engine_or_workflows():
    code = ("import sys, rewardscope.config; "
            "bad = [m for m in sys.modules if m.startswith(('rewardscope.engine', "
            "'rewardscope.workflows', 'rewardscope.science', 'rewardscope.live'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 0, r.stdout + r.stderr


# ----------------------------------------------------------------------------- command line

def test_flags_are_generated_from_the_declarations():
    p = argparse.ArgumentParser()
    serve.add_arguments(p)
    options = {o for a in p._actions for o in a.option_strings}
    for name in config.FLAG_KEYS:
        assert config.KEYS[name].option in options, name
    assert {"--no-allow-insecure-bind", "--config"} <= options
    assert "--cold-budget" not in options  # not declared as a flag
    args = _parse("--lattice-px", "9.5", "--budget", "3", "--frames-mode", "pull",
                  "--allow-insecure-bind", "--workflow", "atoms,domains")
    assert args.lattice_px == 9.5 and args.budget == 3 and args.frames_mode == "pull"
    assert args.allow_insecure_bind is True
    cfg = serve.effective_config(args)
    assert cfg.workflow == ["atoms", "domains"] and cfg.allow_insecure_bind is True
    assert serve.effective_config(_parse()) == config.load(None, {})


@pytest.mark.parametrize("argv", [["--frames-mode", "push"], ["--budget", "1.5"],
                                  ["--log-format", "xml"], ["--lattice-px", "wide"]])
def test_bad_flag_values_are_refused_by_argparse(argv, capsys):
    with pytest.raises(SystemExit) as info:
        _parse(*argv)
    assert info.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_no_flag_overrides_a_true_from_the_file(tmp_path):
    path = _toml(tmp_path, "[security]\nallow_insecure_bind = true\n")
    assert serve.effective_config(_parse("--config", str(path))).allow_insecure_bind is True
    args = _parse("--config", str(path), "--no-allow-insecure-bind")
    assert serve.effective_config(args).allow_insecure_bind is False


def test_config_command_prints_the_effective_config_and_the_markdown(capsys, monkeypatch):
    monkeypatch.delenv("REWARDSCOPE_BUDGET", raising=False)
    assert cli_main(["config", "--lattice-px", "9", "--workflow", "atoms"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["lattice_px"] == 9.0 and out["workflow"] == "atoms" and out["budget"] == 8
    assert cli_main(["config", "--markdown"]) == 0
    assert capsys.readouterr().out == config.markdown_table()
    assert cli_main(["config", "--workflow", "atoms,,domains"]) == 2
    assert "'workflow'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- precedence

def test_precedence_defaults_environment_file_flags(tmp_path):
    path = _toml(tmp_path, "[analysis]\nbudget = 5\ndeadline_s = 0.4\n")
    env = {"REWARDSCOPE_BUDGET": "4", "REWARDSCOPE_SEED": "7", "REWARDSCOPE_DEADLINE_S": "0.3",
           "REWARDSCOPE_WORKFLOW": "atoms,latent", "OTHER_BUDGET": "99"}
    assert config.load(None, env={}).budget == 8
    cfg = config.load(None, env=env)
    assert (cfg.budget, cfg.seed, cfg.workflow) == (4, 7, ["atoms", "latent"])
    cfg = config.load(path, env=env)
    assert (cfg.budget, cfg.seed, cfg.deadline_s) == (5, 7, 0.4)
    cfg = config.load(path, {"budget": 6, "deadline_s": None}, env=env)
    assert (cfg.budget, cfg.seed, cfg.deadline_s) == (6, 7, 0.4)


def test_environment_values_are_typed_and_checked():
    cfg = config.load(None, env={"REWARDSCOPE_ALLOW_INSECURE_BIND": "yes",
                                 "REWARDSCOPE_METRICS_PORT": "0"})
    assert cfg.allow_insecure_bind is True and cfg.metrics_port == 0
    with pytest.raises(config.ConfigError, match="environment: 'budget' must be int"):
        config.load(None, env={"REWARDSCOPE_BUDGET": "many"})
    with pytest.raises(config.ConfigError, match="metrics_port must be 0..65535"):
        config.load(None, env={"REWARDSCOPE_METRICS_PORT": "70000"})


# ----------------------------------------------------------------------------- TOML

def test_toml_sections_unknown_keys_and_misplaced_keys(tmp_path):
    ok = _toml(tmp_path, '[service]\nlattice_px = 10.0\n[analysis]\nknee = "chebyshev"\n'
                         '[workflows.atoms]\nrewards = ["count_quality"]\n')
    cfg = config.load(ok, env={})
    assert cfg.lattice_px == 10.0 and cfg.knee == "chebyshev"  # flat: section is cosmetic
    assert cfg.rewards == {"atoms": ["count_quality"]}
    typo = _toml(tmp_path, "[analysis]\nlatice_px = 10.0\n")
    with pytest.raises(config.ConfigError) as info:
        config.load(typo, env={})
    assert "'latice_px'" in str(info.value) and "[analysis]" in str(info.value)
    assert "did you mean 'lattice_px'" in str(info.value)
    with pytest.raises(config.ConfigError, match=r"unknown section \[analyis\]"):
        config.load(_toml(tmp_path, "[analyis]\nbudget = 2\n"), env={})
    with pytest.raises(config.ConfigError, match="unknown configuration key 'bogus'"):
        config.load(_toml(tmp_path, "bogus = 1\n"), env={})
    with pytest.raises(config.ConfigError, match="'budget' must be int"):
        config.load(_toml(tmp_path, "[analysis]\nbudget = 2.5\n"), env={})
    with pytest.raises(config.ConfigError, match="knee must be one of"):
        config.load(_toml(tmp_path, '[analysis]\nknee = "manhattan"\n'), env={})


def test_deploy_example_sets_only_declared_keys_in_their_sections():
    import tomllib

    data = tomllib.loads((ROOT / "deploy" / "rewardscope.toml").read_text())
    for section, values in data.items():
        if section == "workflows":
            continue
        for name in values:
            assert config.KEYS[name].section == section, (section, name)
    # the shipped chain: the "all" alias's workflows plus the latent analysis, listed explicitly
    assert config.load(ROOT / "deploy" / "rewardscope.toml", env={}).workflow == [
        "atoms", "domains", "amorphous", "latent"]


# ----------------------------------------------------------------------------- workflow

def test_workflow_accepts_names_lists_and_dotted_paths(tmp_path):
    path = _toml(tmp_path, '[analysis]\nworkflow = ["atoms", "domains", '
                           '"mypkg.mod:MyWorkflow"]\n')
    cfg = config.load(path, env={})
    assert cfg.workflow == ["atoms", "domains", "mypkg.mod:MyWorkflow"]
    assert cfg.workflow_names() == ["atoms", "domains", "mypkg.mod:MyWorkflow"]
    for value in ("atoms", "all", "latent", "mypkg.sub.mod:Outer.Inner"):
        cfg = config.load(None, {"workflow": value}, env={})
        assert cfg.workflow == value and cfg.workflow_names() == [value]
    assert config.load(None, {"workflow": " atoms , domains "}, env={}).workflow == \
        ["atoms", "domains"]
    assert config.load(None, {"workflow": ("atoms",)}, env={}).workflow == ["atoms"]
    # syntax only: names that do not exist are for the engine to refuse
    assert config.load(None, {"workflow": "no_such_chain"}, env={}).workflow == "no_such_chain"


@pytest.mark.parametrize("value", ["", "atoms,,domains", "atoms,", [], ["atoms", 3], 3,
                                   "two words", "pkg.mod:", ":Class", "pkg..mod:C", "a-b"])
def test_workflow_syntax_errors_name_the_key(value):
    with pytest.raises(config.ConfigError, match="'workflow' must be a name"):
        config.load(None, {"workflow": value}, env={})


def test_workflow_set_live_from_a_comma_separated_string():
    cfg = config.ServiceConfig().updated_live({"workflow": "atoms,domains"})
    assert cfg.workflow == ["atoms", "domains"]
    assert cfg.updated_live({"workflow": ["atoms"]}).workflow == ["atoms"]


# ----------------------------------------------------------------------------- docs

def test_operations_doc_table_is_the_generated_one():
    doc = OPERATIONS.read_text()
    assert doc.count(config.TABLE_START) == 1 and doc.count(config.TABLE_END) == 1
    between = doc.split(config.TABLE_START)[1].split(config.TABLE_END)[0]
    assert between == "\n" + config.markdown_table(), \
        "docs/OPERATIONS.md is stale: regenerate with `rewardscope config --markdown`"
    assert config.replace_table(doc) == doc
    table = config.markdown_table()
    for k in config.KEYS.values():
        assert f"| `{k.name}` |" in table
    assert "| `lattice_px` | `[analysis]` | float | `0.0` | `--lattice-px` | yes |" in table
