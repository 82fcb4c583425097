"""The benchmark suite's pieces (``benchmarks/``) run at tiny sizes and give well-formed rows;
``import rewardscope.cli`` stays light (no plotting library, no torch). No timing asserts."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import bench_ingest, bench_kernels, bench_log, bench_scaling, bench_suite  # noqa: E402


def _agrees(text: str) -> bool:
    if text == "equal":
        return True
    return text.startswith("max abs diff ") and float(text.split()[-1]) < 1e-5


def test_every_kernel_row_times_both_sides_and_the_outputs_agree():
    rows = bench_kernels.run(scale=0.25, repeat=1)
    names = {r["kernel"] for r in rows}
    assert {"knn_distance_sums", "extract_patches", "label_perimeters", "collinear_pairs",
            "hypervolume"} <= names
    for r in rows:
        assert r["reference_s"] > 0 and r["numba_s"] > 0, r
        assert math.isclose(r["ratio"], r["reference_s"] / r["numba_s"])
        assert _agrees(r["agree"]), r


def test_log_row_scores_both_detectors_against_truth():
    r = bench_log.bench_size(128, repeat=1)
    assert r["size"] == 128 and r["n_true"] > 0
    assert min(r["blob_log_s"], r["cold_s"], r["cached_s"]) > 0
    assert 0.9 <= r["f1_ours"] <= 1.0 and 0.9 <= r["f1_blob_log"] <= 1.0


def test_exponent_recovers_a_power_law_and_rejects_bad_input():
    x = np.array([1e4, 4e4, 1.6e5])
    assert bench_scaling.exponent(x, 3e-6 * x**1.5) == pytest.approx(1.5)
    with pytest.raises(ValueError):
        bench_scaling.exponent([1.0], [2.0])
    with pytest.raises(ValueError):
        bench_scaling.exponent([1.0, 2.0], [0.0, 1.0])


def test_ingest_case_counts_what_a_real_daemon_accepted():
    r = bench_ingest.run_case(96, "uint16", duration_s=0.3, analysis=False, settle_s=0.5)
    assert r["frame"] == "96² uint16" and r["MB_per_frame"] == pytest.approx(96 * 96 * 2 / 1e6)
    assert 0 < r["accepted"] <= r["sent"] and r["lost"] == r["sent"] - r["accepted"]
    assert r["analysed"] == 0  # paused: ingest alone
    assert r["frames_per_s"] > 0 and r["MB_per_s"] > 0


def test_suite_writes_a_markdown_table_and_json_with_the_machine(tmp_path):
    report = bench_suite.run(quick=True, only=["kernels"], probe_gpu=False)
    md, js = bench_suite.write(report, tmp_path)
    assert md.name.endswith("-quick.md") and js.name.endswith("-quick.json")
    doc = json.loads(js.read_text())
    assert doc["mode"] == "quick" and set(doc["sections"]) == {"kernels"}
    m = doc["machine"]
    assert m["cores"] >= 1 and m["cpu"] and m["gpu"]
    assert len(doc["sections"]["kernels"]["rows"]) == len(bench_kernels.cases(0.1))
    for when in ("host_speed_at_start", "host_speed_at_end"):  # absolute times compare
        assert m[when]["python_loop_s"] > 0 and m[when]["sgemm_gflops"] > 0
    text = md.read_text()
    assert m["cpu"] in text and "| kernel | input |" in text
    assert f"Python loop {m['host_speed_at_start']['python_loop_s']} s" in text
    for r in doc["sections"]["kernels"]["rows"]:
        assert f"| {r['kernel']} |" in text


def test_suite_rejects_an_unknown_section():
    with pytest.raises(ValueError, match="only"):
        bench_suite.run(quick=True, only=["nope"], probe_gpu=False)


@pytest.mark.parametrize("module", ["rewardscope.cli", "rewardscope.cli.analyze"])
def test_cli_import_does_not_pull_in_matplotlib_or_torch(module):
    code = (f"import sys, {module}\n"
            "print(','.join(m for m in ('matplotlib', 'torch', 'pyroved') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"{module} imported {out.stdout.strip()}"


def test_markdown_renders_a_section_of_unknown_shape_and_a_failure():
    report = {"date": "2026-01-02T03:04:05+00:00", "mode": "full",
              "machine": bench_suite.machine(probe_gpu=False),
              "sections": {"batch": {"rows": [{"executor": "local:2", "frames_per_s": 1.25}],
                                     "memory": [{"worker": 0, "peak_rss_mb": 310.0}],
                                     "note": "same seed", "seconds": 1.0},
                           "cold": {"error": "RuntimeError: boom", "seconds": 0.1}}}
    text = bench_suite.markdown(report)
    assert "# Benchmarks 2026-01-02 (full)" in text
    assert "| local:2 | 1.25 |" in text and "| 0 | 310 |" in text and "same seed" in text
    assert "**failed**: `RuntimeError: boom`" in text
