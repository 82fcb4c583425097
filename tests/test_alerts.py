"""The shipped alert rules, evaluated by a real Prometheus scraping a live daemon.

Prometheus ($PROMETHEUS or ``prometheus`` on PATH; ``make install`` installs Debian's package
when it can, a test never does) scrapes a :class:`Daemon` on loopback every 200 ms and evaluates
``deploy/prometheus/alerts.yml`` with only the ``for:`` durations shortened: the expressions are
the shipped ones. The instrument is an :class:`InstrumentClient` bound on a loopback port that
the daemon's SUB connects to. Closing it must fire ``RewardscopeDisconnected``; binding again on
the same port must clear it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import loopback
import pytest

from rewardscope import config
from rewardscope.clients import InstrumentClient
from rewardscope.live.daemon import Daemon

try:
    import yaml
except ImportError:  # PyYAML is not a dependency
    yaml = None

ALERTS = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "alerts.yml"
WAIT_S = 25.0  # per step; generous for a slow, shared machine (a timeout, never a measure)
SHORT_FOR = "1s"
_FOR = re.compile(r"^(\s*)for:\s*\S+[ \t]*$", re.M)


def shortened_rules(text: str) -> str:
    """The shipped rules with every ``for:`` set to SHORT_FOR; nothing else changes."""
    out, n = _FOR.subn(lambda m: f"{m.group(1)}for: {SHORT_FOR}", text)
    assert n == text.count("- alert:"), "every alert of alerts.yml has a for: line"
    return out


def test_shortened_rules_keep_the_shipped_expressions() -> None:
    text = ALERTS.read_text()
    short = shortened_rules(text)
    assert "RewardscopeDisconnected" in short and "for: 2m" not in short
    if yaml is None:  # then line by line: only for: lines differ
        diff = [(a, b) for a, b in zip(text.splitlines(), short.splitlines(), strict=True)
                if a != b]
        assert diff and all(a.strip().startswith("for:") for a, _ in diff)
        return
    shipped, copy = (
        {r["alert"]: r for g in yaml.safe_load(t)["groups"] for r in g["rules"]}
        for t in (text, short))
    assert shipped.keys() == copy.keys()
    for name, rule in shipped.items():
        assert {k: v for k, v in rule.items() if k != "for"} == \
            {k: v for k, v in copy[name].items() if k != "for"}, name
        assert copy[name]["for"] == SHORT_FOR


@pytest.fixture(scope="module")
def prometheus_bin() -> str:
    path = os.environ.get("PROMETHEUS") or shutil.which("prometheus")
    if not path:
        pytest.skip("prometheus not found ($PROMETHEUS or PATH); `make install` installs "
                    "Debian's 'prometheus' package as root (the Makefile's system step)")
    return path


class Prometheus:
    """A throw-away Prometheus server on loopback, its config and data under ``root``."""

    def __init__(self, binary: str, root: Path, target: str, port: int) -> None:
        root.mkdir(parents=True, exist_ok=True)
        (root / "alerts.yml").write_text(shortened_rules(ALERTS.read_text()))
        (root / "prometheus.yml").write_text(
            "global:\n"
            "  scrape_interval: 200ms\n"
            "  scrape_timeout: 200ms\n"
            "  evaluation_interval: 200ms\n"
            "rule_files: [alerts.yml]\n"
            "scrape_configs:\n"
            "  - job_name: rewardscope\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n")
        self.url = f"http://127.0.0.1:{port}"
        self.log = root / "prometheus.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={root / 'prometheus.yml'}",
                 f"--storage.tsdb.path={root / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                 "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, cwd=root)

    def get(self, path: str, **params: str) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=5) as r:
            return json.loads(r.read())

    def ready(self) -> bool:
        assert self.proc.poll() is None, f"prometheus exited:\n{self.log_tail()}"
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def value(self, expr: str) -> float | None:
        result = self.get("/api/v1/query", query=expr)["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def alert_state(self, name: str) -> str | None:
        """``pending`` or ``firing`` while ``name`` is active, None when it is not."""
        states = {a["state"] for a in self.get("/api/v1/alerts")["data"]["alerts"]
                  if a["labels"].get("alertname") == name}
        return "firing" if "firing" in states else states.pop() if states else None

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


def wait_for(cond: Callable[[], object], what: str, prom: Prometheus) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{prom.log_tail()}"
        time.sleep(0.1)


@pytest.mark.slow
def test_disconnected_alert_fires_and_clears_with_the_instrument(prometheus_bin: str,
                                                                 tmp_path: Path) -> None:
    frames_port, metrics_port, prom_port = loopback.free_ports(3)
    frames = f"tcp://127.0.0.1:{frames_port}"
    inst = InstrumentClient(frames)
    cfg = config.load(None, {"frames": frames, "results": "tcp://127.0.0.1:*",
                             "control": "tcp://127.0.0.1:*", "metrics_port": metrics_port,
                             "heartbeat_s": 0.5})
    d = Daemon(cfg)
    d.start()
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    prom = Prometheus(prometheus_bin, tmp_path / "prom", f"127.0.0.1:{metrics_port}", prom_port)
    try:
        wait_for(prom.ready, "prometheus to start", prom)
        # scraped, running and connected: the rule is loaded and quiet
        wait_for(lambda: prom.value("rewardscope_connected") == 1, "a scrape showing the link",
                 prom)
        assert prom.value('rewardscope_state{state="running"}') == 1
        rules = prom.get("/api/v1/rules")["data"]["groups"]
        shipped = {r["name"] for g in rules for r in g["rules"]}
        assert "RewardscopeDisconnected" in shipped
        assert prom.alert_state("RewardscopeDisconnected") is None

        inst.close()  # the instrument goes away
        wait_for(lambda: prom.alert_state("RewardscopeDisconnected") == "firing",
                 "RewardscopeDisconnected to fire", prom)
        assert prom.value("rewardscope_connected") == 0
        assert prom.value('ALERTS{alertname="RewardscopeDisconnected",alertstate="firing"}') == 1

        inst = InstrumentClient(frames)  # ... and comes back on the same port
        wait_for(lambda: prom.alert_state("RewardscopeDisconnected") is None,
                 "RewardscopeDisconnected to clear", prom)
        assert prom.value("rewardscope_connected") == 1
        assert prom.alert_state("RewardscopeDown") is None  # scraped all along
    finally:
        prom.stop()
        inst.close()
        d.stop()
        t.join(timeout=30)
    assert not t.is_alive()
