"""The deployment folder: Prometheus config and alerts, Grafana, compose, Dockerfiles, systemd.

promtool validates what it can; the rest are consistency checks that catch the usual drift: a
dashboard or alert querying a metric the service no longer exports, a provisioning path that
does not match the compose mount, a Dockerfile losing the torch pin.

promtool comes from the system (``make install`` installs Debian's ``prometheus`` package when
it can); tests never install anything and skip, saying why, when it is missing.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rewardscope import config
from rewardscope.live.metrics import DROP_REASONS, STAGES, Metrics

try:
    import yaml
except ImportError:  # PyYAML is not a dependency; fall back to light text checks
    yaml = None

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "rewardscope.json"
COMPOSE = DEPLOY / "docker-compose.yml"
DATASOURCE_UID = "rewardscope-prometheus"
# Series Prometheus itself creates for every target.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
# generated from the keys declared with flag=True in rewardscope.config
SERVE_FLAGS = {"--config"} | {config.KEYS[name].option for name in config.FLAG_KEYS}


# ----------------------------------------------------------------------------- promtool

@pytest.fixture(scope="session")
def promtool() -> str:
    """Path to promtool ($PROMTOOL, then PATH); skip when absent (never installed here)."""
    path = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not path:
        pytest.skip("promtool not found ($PROMTOOL or PATH); `make install` installs Debian's "
                    "'prometheus' package, which ships it, when run as root (the system step)")
    return path


def run_promtool(promtool: str, *args: str, stdin: str | None = None) -> str:
    r = subprocess.run([promtool, *args], input=stdin, capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0, f"promtool {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def test_prometheus_config_is_valid(promtool: str) -> None:
    run_promtool(promtool, "check", "config", str(PROM / "prometheus.yml"))


def test_alert_rules_are_valid(promtool: str) -> None:
    out = run_promtool(promtool, "check", "rules", str(PROM / "alerts.yml"))
    assert "SUCCESS" in out


def test_alert_rules_fire_as_documented(promtool: str) -> None:
    run_promtool(promtool, "test", "rules", str(PROM / "alerts_test.yml"))


def test_live_scrape_passes_promtool_lint(promtool: str) -> None:
    m = Metrics(rewards=["atom_count"])
    m.frame_received()
    m.frame_dropped("stale")
    m.error("bad_header")
    m.observe_stage("atoms", 0.01)
    m.observe_latency(0.3)
    m.model_swap("vae")
    m.serve(0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{m.port}/metrics", timeout=5) as r:
            text = r.read().decode()
    finally:
        m.stop()
    assert "rewardscope_frames_received_total 1.0" in text
    out = run_promtool(promtool, "check", "metrics", stdin=text)
    assert out.strip() == "", out


# ----------------------------------------------------------------------------- metric names

_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on",
             "ignoring", "group_left", "group_right"}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL (or Grafana-templated PromQL) expression reads."""
    s = re.sub(r'"(?:\\.|[^"\\])*"', " ", expr)  # string literals
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range selectors, including [$__rate_interval]
    s = _GROUPING.sub(" ", s)  # by (le, stage) etc.
    s = re.sub(r"\$\{?\w+\}?", " ", s)  # Grafana variables
    s = re.sub(r"(?<![\w:])\d+(?:\.\d*)?(?:[eE][-+]?\d+)?", " ", s)  # numbers, 1e-9
    names = set()
    for tok in re.finditer(r"[A-Za-z_:][\w:]*", s):
        if s[tok.end():].lstrip().startswith("("):  # a function call
            continue
        if tok.group().lower() not in _KEYWORDS:
            names.add(tok.group())
    return names


def test_metric_name_extraction() -> None:
    expr = ('histogram_quantile(0.9, sum by (le, stage) (rate(a_seconds_bucket{x="y(z)"}'
            '[$__rate_interval]))) > 1e-3 and on (instance) (b_total / c) unless time() - d')
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "c", "d"}


def exported_names() -> set[str]:
    """Every sample name one Metrics instance exposes, all methods exercised."""
    m = Metrics(rewards=["atom_count"])
    m.frame_received()
    m.frame_processed()
    for reason in DROP_REASONS:
        m.frame_dropped(reason)
    m.error("bad_header")
    for stage in STAGES:
        m.observe_stage(stage, 0.01)
    m.observe_latency(0.5)
    m.evaluations(3)
    m.set_rewards({"atom_count": 1.0})
    m.set_pareto({"atoms": 2}, {"atoms": 0.5})
    m.set_queue(1)
    m.set_lag_seconds(0.2)
    m.model_swap("vae")
    m.set_connected(True)
    m.set_state("running")
    m.set_warm(True)
    return {s.name for fam in text_string_to_metric_families(m.render().decode())
            for s in fam.samples}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict]:
    out = []
    for p in dashboard()["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows nest their panels
    return out


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p.get("targets", []) if "expr" in t]


def alert_rules() -> list[dict]:
    text = (PROM / "alerts.yml").read_text()
    if yaml is not None:
        return [r for g in yaml.safe_load(text)["groups"] for r in g["rules"]]
    return [{"alert": "?", "expr": e} for e in _yaml_exprs(text)]


def _yaml_exprs(text: str) -> list[str]:
    """``expr:`` values (inline or ``|`` blocks) without a YAML parser."""
    out, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)expr:\s*(.*)$", line)
        if not m:
            continue
        if m.group(2).strip() not in ("|", ">", "|-", ">-"):
            out.append(m.group(2))
            continue
        block = []
        for nxt in lines[i + 1:]:
            if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= len(m.group(1)):
                break
            block.append(nxt)
        out.append("\n".join(block))
    return out


def test_dashboard_and_alerts_query_only_exported_metrics() -> None:
    exported = exported_names()
    exprs = dashboard_exprs() + [r["expr"] for r in alert_rules()]
    assert len(exprs) > 20
    queried = set().union(*(metric_names(e) for e in exprs))
    missing = queried - exported - SYNTHETIC
    assert not missing, f"queried but not exported by Metrics: {sorted(missing)}"
    # and the dashboard covers what operators need
    for name in ("rewardscope_frames_received_total", "rewardscope_frames_dropped_total",
                 "rewardscope_errors_total", "rewardscope_frame_latency_seconds_bucket",
                 "rewardscope_stage_duration_seconds_bucket",
                 "rewardscope_optimizer_evaluations_total", "rewardscope_reward_value",
                 "rewardscope_pareto_front_size", "rewardscope_pareto_hypervolume",
                 "rewardscope_queue_depth", "rewardscope_lag_seconds",
                 "rewardscope_last_frame_timestamp_seconds", "rewardscope_connected",
                 "rewardscope_state", "rewardscope_model_info"):
        assert name in queried, name


def test_alerts_cover_the_documented_conditions() -> None:
    rules = {r["alert"]: r["expr"] for r in alert_rules()} if yaml else None
    text = (PROM / "alerts.yml").read_text()
    for needle in ("up{job=\"rewardscope\"} == 0", "rewardscope_last_frame_timestamp_seconds",
                   "rewardscope_frame_latency_seconds_bucket", "rewardscope_frames_dropped_total",
                   "rewardscope_errors_total"):
        assert needle in text, needle
    if rules is not None:
        assert {"RewardscopeDown", "RewardscopeNoFrames", "RewardscopeLatencyAboveFramePeriod",
                "RewardscopeHighDropRate", "RewardscopeErrors"} <= set(rules)
    doc = (ROOT / "docs" / "OPERATIONS.md").read_text()
    for name in ("RewardscopeDown", "RewardscopeNoFrames", "RewardscopeLatencyAboveFramePeriod",
                 "RewardscopeHighDropRate", "RewardscopeErrors", "RewardscopeDisconnected"):
        assert name in doc, f"{name} not documented in docs/OPERATIONS.md"


def test_every_metric_is_documented() -> None:
    doc = (ROOT / "docs" / "OPERATIONS.md").read_text()
    m = Metrics(process=False)
    for fam in m.registry.collect():
        name = fam.name + {"counter": "_total", "info": "_info"}.get(fam.type, "")
        assert f"`{name}`" in doc, f"{name} missing from the metric table in OPERATIONS.md"


# ----------------------------------------------------------------------------- grafana

def test_dashboard_is_a_real_dashboard() -> None:
    d = dashboard()
    assert d["uid"] == "rewardscope" and d["title"]
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    graphs = [p for p in panels if p["type"] != "row"]
    assert len(graphs) >= 15
    for p in graphs:
        assert p["targets"], p["title"]
        assert p["datasource"]["uid"] == DATASOURCE_UID, p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == DATASOURCE_UID, p["title"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24 and g["w"] > 0 and g["h"] > 0, p["title"]
    refs = re.findall(r"\$(\w+)", " ".join(dashboard_exprs()))
    variables = {v["name"] for v in d["templating"]["list"]}
    assert set(refs) - {"__rate_interval", "__range", "__interval"} <= variables


def _yaml_or_none(path: Path) -> dict | None:
    return yaml.safe_load(path.read_text()) if yaml is not None else None


def test_grafana_provisioning_matches_compose_mounts() -> None:
    ds_file = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
    dash_file = GRAFANA / "provisioning" / "dashboards" / "rewardscope.yml"
    compose = COMPOSE.read_text()
    assert "./grafana/provisioning:/etc/grafana/provisioning" in compose
    mount = re.search(r"\./grafana/dashboards:([^:\s]+)", compose)
    assert mount, "compose must mount deploy/grafana/dashboards into grafana"
    ds, prov = _yaml_or_none(ds_file), _yaml_or_none(dash_file)
    if ds is None or prov is None:
        assert f"uid: {DATASOURCE_UID}" in ds_file.read_text()
        assert f"path: {mount.group(1)}" in dash_file.read_text()
        return
    (source,) = ds["datasources"]
    assert source["uid"] == DATASOURCE_UID and source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    (provider,) = prov["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == mount.group(1)


# ----------------------------------------------------------------------------- compose

def test_compose_is_valid_and_wires_the_services() -> None:
    text = COMPOSE.read_text()
    assert "\t" not in text, "YAML forbids tabs for indentation"
    if yaml is None:
        for needle in ("services:", "rewardscope:", "prometheus:", "grafana:", "simulator:",
                       "profiles: [simulator]", "tcp://simulator:5555", "--allow-insecure-bind"):
            assert needle in text, needle
        return
    doc = yaml.safe_load(text)
    services = doc["services"]
    assert {"rewardscope", "prometheus", "grafana", "simulator"} <= set(services)
    assert "profiles" not in services["rewardscope"]
    assert services["simulator"]["profiles"] == ["simulator"]

    svc = services["rewardscope"]
    cmd = [str(c) for c in svc["command"]]
    flags = {c for c in cmd if c.startswith("--")}
    assert flags <= SERVE_FLAGS, f"unknown serve flags: {flags - SERVE_FLAGS}"
    arg = {cmd[i]: cmd[i + 1] for i, c in enumerate(cmd[:-1]) if c.startswith("--")}
    assert "tcp://simulator:5555" in arg["--frames"]
    assert arg["--metrics-addr"] == "0.0.0.0" and arg["--metrics-port"] == "9108"
    assert "--allow-insecure-bind" in cmd
    assert arg["--config"] == "/etc/rewardscope/rewardscope.toml"
    build = svc["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).is_file()

    sim = services["simulator"]
    assert sim["entrypoint"] == ["rewardscope", "simulate"]
    assert "tcp://0.0.0.0:5555" in sim["command"]
    assert sim["command"][sim["command"].index("tcp://0.0.0.0:5555") - 1] == "--publish"

    for svc_name, spec in services.items():
        for vol in spec.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (COMPOSE.parent / src).exists(), f"{svc_name} mounts missing {src}"
    prom = yaml.safe_load((PROM / "prometheus.yml").read_text())
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "rewardscope"]
    assert "rewardscope:9108" in job["static_configs"][0]["targets"]
    for rule_file in prom["rule_files"]:
        assert (PROM / rule_file).is_file()


def test_example_config_loads() -> None:
    cfg = config.load(DEPLOY / "rewardscope.toml", env={})
    assert cfg.metrics_port == 9108 and cfg.metrics_addr == "127.0.0.1"
    assert cfg.allow_insecure_bind is False


# ----------------------------------------------------------------------------- images, systemd

@pytest.mark.parametrize("name, base", [("Dockerfile", "python:3.11-slim"),
                                        ("Dockerfile.cuda", "nvidia/cuda:")])
def test_dockerfile_pins_the_torch_pair(name: str, base: str) -> None:
    lines = [ln.strip() for ln in (DEPLOY / name).read_text().splitlines()]
    code = [ln for ln in lines if ln and not ln.startswith("#")]
    assert code[0].startswith(f"FROM {base}") or any(c.startswith(f"FROM {base}") for c in code)
    text = "\n".join(code)
    torch_at = text.find('"torch==2.14.1"')
    assert torch_at >= 0 and '"torchvision==0.29.1"' in text
    project_at = text.find("pip install .")
    assert project_at > torch_at, "torch must be installed before the project"
    assert 'ENTRYPOINT ["rewardscope", "serve"]' in text
    assert re.search(r"^USER (?!root)\w+", text, re.M), "run as an unprivileged user"
    assert (DEPLOY / f"{name}.dockerignore").is_file()


def test_systemd_unit() -> None:
    path = DEPLOY / "systemd" / "rewardscope.service"
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read(path)
    svc = unit["Service"]
    assert svc["Restart"] == "on-failure"
    assert svc["User"] not in ("", "root") and svc["KillSignal"] == "SIGTERM"
    assert svc["ExecStart"].split()[1:] == ["serve", "--config",
                                            "/etc/rewardscope/rewardscope.toml"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return
    r = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True,
                       timeout=60, check=False)
    # The venv is not installed here, so only "not executable" may be reported.
    problems = [ln for ln in (r.stdout + r.stderr).splitlines()
                if ln.strip() and "is not executable" not in ln]
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_running_daemon_exports_what_it_did(promtool: str) -> None:
    """A real daemon's /metrics, after real frames and a bad one, counts them and lints clean."""
    import threading
    import time

    from rewardscope.clients import InstrumentClient, ResultsClient
    from rewardscope.live.daemon import Daemon
    from rewardscope.simulators.perovskite import PerovskiteSimulator, SimConfig

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    inst = InstrumentClient("tcp://127.0.0.1:*")
    cfg = config.load(None, {"frames": inst.endpoint, "results": "tcp://127.0.0.1:*",
                             "control": "tcp://127.0.0.1:*", "metrics_port": port,
                             "budget": 2, "cold_budget": 3})
    d = Daemon(cfg)
    d.start()
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    res = ResultsClient(d.results_endpoint)
    try:
        assert inst.wait_for_subscriber(10)
        time.sleep(0.3)
        px = PerovskiteSimulator(SimConfig(shape=(96, 96))).frame(0).pixels
        inst.start_session("m")
        for _ in range(2):
            inst.send_frame(px)
            assert res.recv_result(timeout=20) is not None
        inst.sock.send_multipart([b"frame", b"\xc1garbage", b""])
        time.sleep(0.5)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    finally:
        res.close()
        inst.close()
        d.stop()
        t.join(timeout=20)
    body = text.decode()
    families = {f.name: f for f in text_string_to_metric_families(body)}

    def value(name: str, **labels: str) -> float:
        for fam in families.values():
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return s.value
        raise AssertionError(f"{name} {labels} not exported")

    assert value("rewardscope_frames_processed_total") == 2
    assert value("rewardscope_errors_total", code="bad_header") == 1
    assert value("rewardscope_frames_dropped_total", reason="invalid") == 1
    assert value("rewardscope_optimizer_evaluations_total") >= 3
    assert value("rewardscope_frame_latency_seconds_count") == 2
    assert value("rewardscope_reward_value", reward="count_quality") >= 0
    assert value("rewardscope_state", state="running") == 1
    assert value("rewardscope_connected") == 1  # from the frames socket's monitor events
    assert value("rewardscope_queue_depth") == 0  # the analysis thread took both frames
    assert value("rewardscope_pareto_front_size", workflow="atoms") >= 1
    assert value("rewardscope_pareto_hypervolume", workflow="atoms") >= 0
    run_promtool(promtool, "check", "metrics", stdin=body)
