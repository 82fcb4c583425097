"""The Metrics API: every method works, the exposition parses and follows the naming guide."""

from __future__ import annotations

import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rewardscope import __version__, protocol
from rewardscope.live.metrics import DROP_REASONS, STAGES, STATES, Metrics


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, from the rendered text as Prometheus sees it."""
    out = {}
    for fam in text_string_to_metric_families(m.render().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: Metrics, name: str, **labels: str) -> float:
    return samples(m)[(name, tuple(sorted(labels.items())))]


def exercise(m: Metrics) -> None:
    """Call every method the daemon uses, at least once."""
    m.frame_received()
    m.frame_received(timestamp=1234.5)
    m.frame_processed()
    for reason in DROP_REASONS:
        m.frame_dropped(reason)
    m.frame_dropped("seq_gap", n=3)
    for code in protocol.ERROR_CODES:
        m.error(code)
    for stage in STAGES:
        m.observe_stage(stage, 0.003)
    with m.time_stage("decode"):
        pass
    m.observe_stages({"atoms": 0.02, "not_a_stage": 1.0})
    m.observe_latency(0.4)
    m.evaluations(8)
    m.set_rewards({"atom_count": 412.0, "fit_residual": 0.07})
    m.set_pareto({"atoms": 5, "domains": 2}, {"atoms": 0.83, "domains": 12.5})
    m.set_queue(2)
    m.set_lag_seconds(0.6)
    m.model_swap("vae-2026-05")
    m.set_last_frame_timestamp(1_700_000_000.0)
    m.set_connected(True)
    m.set_state("running")
    m.set_warm(True)
    m.checkpoint_failed()


def test_preinitialised_series_are_zero_before_any_event() -> None:
    s = samples(Metrics(rewards=["atom_count"], workflows=["atoms"]))
    for reason in DROP_REASONS:
        assert s[("rewardscope_frames_dropped_total", (("reason", reason),))] == 0
    for code in (*protocol.ERROR_CODES, "other"):
        assert s[("rewardscope_errors_total", (("code", code),))] == 0
    for stage in STAGES:
        assert s[("rewardscope_stage_duration_seconds_count", (("stage", stage),))] == 0
        assert s[("rewardscope_stage_duration_seconds_bucket",
                  (("le", "+Inf"), ("stage", stage)))] == 0
    for state in STATES:
        assert s[("rewardscope_state", (("state", state),))] == (state == "starting")
    assert s[("rewardscope_reward_value", (("reward", "atom_count"),))] == 0
    for name in ("pareto_front_size", "pareto_hypervolume"):
        assert s[(f"rewardscope_{name}", (("workflow", "atoms"),))] == 0, name
    for name in ("frames_received_total", "frames_processed_total", "optimizer_evaluations_total",
                 "model_swaps_total", "frame_latency_seconds_count", "connected", "warm",
                 "queue_depth", "lag_seconds", "last_frame_timestamp_seconds",
                 "checkpoint_failures_total"):
        assert s[(f"rewardscope_{name}", ())] == 0, name
    assert s[("rewardscope_model_info", (("model", "none"),))] == 1
    assert s[("rewardscope_build_info", (("version", __version__),))] == 1


def test_every_method_updates_its_series() -> None:
    m = Metrics()
    exercise(m)
    assert value(m, "rewardscope_frames_received_total") == 2
    assert value(m, "rewardscope_frames_processed_total") == 1
    assert value(m, "rewardscope_frames_dropped_total", reason="seq_gap") == 4
    assert value(m, "rewardscope_frames_dropped_total", reason="stale") == 1
    assert value(m, "rewardscope_errors_total", code="bad_header") == 1
    assert value(m, "rewardscope_errors_total", code="other") == 0
    assert value(m, "rewardscope_stage_duration_seconds_count", stage="decode") == 2
    assert value(m, "rewardscope_stage_duration_seconds_count", stage="atoms") == 2
    assert value(m, "rewardscope_stage_duration_seconds_bucket", stage="walls", le="0.005") == 1
    assert value(m, "rewardscope_frame_latency_seconds_count") == 1
    assert value(m, "rewardscope_frame_latency_seconds_bucket", le="0.25") == 0
    assert value(m, "rewardscope_frame_latency_seconds_bucket", le="0.5") == 1
    assert value(m, "rewardscope_optimizer_evaluations_total") == 8
    assert value(m, "rewardscope_reward_value", reward="fit_residual") == pytest.approx(0.07)
    assert value(m, "rewardscope_pareto_front_size", workflow="atoms") == 5
    assert value(m, "rewardscope_pareto_front_size", workflow="domains") == 2
    assert value(m, "rewardscope_pareto_hypervolume", workflow="atoms") == pytest.approx(0.83)
    assert value(m, "rewardscope_pareto_hypervolume", workflow="domains") == pytest.approx(12.5)
    assert value(m, "rewardscope_checkpoint_failures_total") == 1
    assert value(m, "rewardscope_queue_depth") == 2
    assert value(m, "rewardscope_lag_seconds") == pytest.approx(0.6)
    assert value(m, "rewardscope_model_swaps_total") == 1
    assert value(m, "rewardscope_model_info", model="vae-2026-05") == 1
    assert ("rewardscope_model_info", (("model", "none"),)) not in samples(m)
    assert value(m, "rewardscope_last_frame_timestamp_seconds") == 1_700_000_000.0
    assert value(m, "rewardscope_connected") == 1
    assert value(m, "rewardscope_state", state="running") == 1
    assert value(m, "rewardscope_state", state="starting") == 0
    assert value(m, "rewardscope_warm") == 1

    m.set_connected(False)
    m.set_state("paused")
    m.set_pareto({"atoms": 3}, None)
    assert value(m, "rewardscope_connected") == 0
    assert value(m, "rewardscope_state", state="paused") == 1
    assert value(m, "rewardscope_state", state="running") == 0
    assert value(m, "rewardscope_pareto_front_size", workflow="atoms") == 3
    assert value(m, "rewardscope_pareto_front_size", workflow="domains") == 0  # no front now
    assert value(m, "rewardscope_pareto_hypervolume", workflow="atoms") == pytest.approx(0.83)


def test_hypervolume_is_per_workflow_never_summed() -> None:
    m = Metrics()
    m.set_pareto({"atoms": 4, "domains": 3}, {"atoms": 0.5, "domains": 40.0})
    m.set_pareto({"atoms": 2}, {"atoms": 0.25})  # this frame ran atoms only
    s = samples(m)
    hv = {dict(labels)["workflow"]: v for (name, labels), v in s.items()
          if name == "rewardscope_pareto_hypervolume"}
    assert hv == {"atoms": 0.25, "domains": 0.0}
    assert ("rewardscope_pareto_hypervolume", ()) not in s  # no unlabelled sum
    m.set_pareto({}, {f"wf{i}": 1.0 for i in range(40)})  # bounded like reward names
    assert sum(1 for name, _ in samples(m) if name == "rewardscope_pareto_hypervolume") == 16


def test_lag_follows_the_frame_in_analysis() -> None:
    m = Metrics()
    assert value(m, "rewardscope_lag_seconds") == 0
    received = time.monotonic() - 5.0  # a frame received 5 s ago is taken for analysis
    m.set_analysing(received)
    first = value(m, "rewardscope_lag_seconds")
    assert first >= 5.0
    assert value(m, "rewardscope_lag_seconds") >= first  # measured at each scrape
    m.set_analysing(None)  # result published, nothing in analysis
    assert value(m, "rewardscope_lag_seconds") == 0
    m.set_lag_seconds(0.25)
    assert value(m, "rewardscope_lag_seconds") == 0.25


def test_lag_with_several_analysis_threads_is_the_oldest_frames() -> None:
    """Cluster mode analyses one frame per worker thread: one thread finishing must not
    report the service idle while another still holds an older frame."""
    m = Metrics()
    now = time.monotonic()
    started, finish = threading.Event(), threading.Event()

    def other_thread() -> None:
        m.set_analysing(now - 8.0)
        started.set()
        finish.wait(10)
        m.set_analysing(None)

    t = threading.Thread(target=other_thread)
    t.start()
    started.wait(10)
    m.set_analysing(now - 2.0)  # this thread: a newer frame
    assert value(m, "rewardscope_lag_seconds") >= 8.0
    m.set_analysing(None)  # this thread's result is out; the other's frame is still in analysis
    assert value(m, "rewardscope_lag_seconds") >= 8.0
    finish.set()
    t.join(10)
    assert value(m, "rewardscope_lag_seconds") == 0


def test_frame_received_stamps_wall_clock() -> None:
    m = Metrics()
    before = time.time()
    m.frame_received()
    assert before <= value(m, "rewardscope_last_frame_timestamp_seconds") <= time.time()


def test_time_stage_records_even_when_the_body_raises() -> None:
    m = Metrics()
    with pytest.raises(RuntimeError), m.time_stage("cluster"):
        raise RuntimeError("workflow failed")
    assert value(m, "rewardscope_stage_duration_seconds_count", stage="cluster") == 1


def test_bounded_labels() -> None:
    m = Metrics()
    with pytest.raises(ValueError):
        m.frame_dropped("cosmic_ray")
    with pytest.raises(ValueError):
        m.observe_stage("session-1234", 0.1)
    with pytest.raises(ValueError):
        m.set_state("exploded")
    m.error("no_such_code")  # counted, never raised from inside error handling
    assert value(m, "rewardscope_errors_total", code="other") == 1
    assert not any(("code", "no_such_code") in labels for _, labels in samples(m))
    m.set_rewards({f"r{i}": float(i) for i in range(200)})
    assert sum(1 for name, _ in samples(m) if name == "rewardscope_reward_value") == 64


def test_naming_guide() -> None:
    m = Metrics(rewards=["atom_count"])
    exercise(m)
    families = list(text_string_to_metric_families(m.render().decode()))
    assert families
    for fam in families:
        assert fam.name.startswith("rewardscope_"), fam.name
        assert fam.documentation, fam.name
        for s in fam.samples:
            assert s.name.startswith("rewardscope_"), s.name
            assert not {"session", "seq"} & set(s.labels), s
            if fam.type == "counter" and not s.name.endswith("_created"):
                assert s.name.endswith("_total"), s.name
    # base units only: no milliseconds or kilobytes anywhere
    text = m.render().decode()
    for bad in ("_ms", "_milliseconds", "_kb", "_kilobytes", "_mb", "_minutes"):
        assert bad + " " not in text and bad + "{" not in text


def test_registries_are_independent() -> None:
    a, b = Metrics(), Metrics()
    a.frame_received()
    assert value(a, "rewardscope_frames_received_total") == 1
    assert value(b, "rewardscope_frames_received_total") == 0


def test_http_endpoint_serves_the_registry() -> None:
    m = Metrics()
    exercise(m)
    server = m.serve(0)  # port 0: a free port on loopback
    try:
        assert server.server_address[0] == "127.0.0.1"
        assert m.port and m.port > 0
        with pytest.raises(RuntimeError):
            m.serve(0)
        with urllib.request.urlopen(f"http://127.0.0.1:{m.port}/metrics", timeout=5) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain")
            scraped = r.read().decode()
    finally:
        m.stop()
    assert m.port is None
    m.stop()  # idempotent

    def without_process(text: str) -> set[str]:
        # process CPU/memory move between two reads; everything else must be identical
        return {ln for ln in text.splitlines() if "_process_" not in ln and "_created" not in ln}

    assert without_process(scraped) == without_process(m.render().decode())
