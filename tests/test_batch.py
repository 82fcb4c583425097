"""``rewardscope batch``: in-process vs a real Dask LocalCluster of 2 workers, resume, a worker
killed mid-run, a corrupt frame. Small simulated frames, few of them, the atoms workflow."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from rewardscope.cli import main
from rewardscope.cli.batch import run_batch
from rewardscope.live.cluster import Cluster
from rewardscope.simulators.perovskite import PerovskiteSimulator, SimConfig

SETTINGS = {"workflow": "atoms", "budget": 3, "cold_budget": 5, "seed": 3, "eval_workers": 1}
TIMING_KEYS = ("elapsed_s", "optimizer_s")
N_FRAMES = 5


def _session_folder(root: Path, name: str, seed: int, n: int = N_FRAMES) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    sim = PerovskiteSimulator(SimConfig(shape=(96, 96), noise_sigma=0.1, seed=seed))
    for i in range(n):
        np.save(folder / f"f{i:02d}.npy", sim.frame(i).pixels)
    return folder


def _results(root: Path) -> dict[str, dict]:
    """Every result JSON under root (by session/file), timing keys removed."""
    out = {}
    for f in sorted(root.glob("*/*.json")):
        if f.parent.name == "store" or f.name.startswith("."):
            continue
        doc = json.loads(f.read_text())
        for k in TIMING_KEYS:
            doc.pop(k)
        out[f"{f.parent.name}/{f.name}"] = doc
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("batch-in")
    return [str(_session_folder(root, "alpha", 1)), str(_session_folder(root, "beta", 2))]


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("batch-ref")
    return out, run_batch(inputs, out, SETTINGS)


def test_in_process_writes_analyze_keys_store_and_export(reference):
    out, report = reference
    assert report.done == 2 * N_FRAMES and not report.failed
    results = _results(out)
    assert sorted(results) == [f"{s}/{i}.json" for s in ("alpha", "beta")
                               for i in range(N_FRAMES)]
    doc = results["alpha/0.json"]
    for key in ("atoms", "labels", "walls", "params", "rewards", "pareto", "n_evaluations",
                "lattice", "hypervolume", "workflow", "image"):
        assert key in doc, key
    assert len(doc["atoms"]) > 20  # a 96² frame of a 12 px lattice holds ~64 A columns
    assert json.loads((out / "failures.json").read_text()) == []
    with h5py.File(out / "alpha.h5", "r") as h5:  # the live service's export of the store
        assert h5.attrs["session"] == "alpha"
        assert h5["frames"].shape == (N_FRAMES, 96, 96)
        assert h5["has_result"][()].all()
        assert list(h5["seq"][()]) == list(range(N_FRAMES))


def test_local_cluster_equals_single_process_then_resume_skips(inputs, reference, tmp_path):
    ref_out, _ = reference
    report = run_batch(inputs, tmp_path, SETTINGS, cluster="local:2")
    assert report.done == 2 * N_FRAMES and not report.failed
    assert _results(tmp_path) == _results(ref_out)
    again = run_batch(inputs, tmp_path, SETTINGS)  # resume: everything is done already
    assert (again.done, again.skipped) == (0, 2 * N_FRAMES)
    (tmp_path / "beta" / "3.json").unlink()  # one frame lost: only it is redone
    third = run_batch(inputs, tmp_path, SETTINGS)
    assert (third.done, third.skipped) == (1, 2 * N_FRAMES - 1)
    assert _results(tmp_path) == _results(ref_out)
    with h5py.File(tmp_path / "beta.h5", "r") as h5:  # the store holds each frame once
        assert h5["frames"].shape[0] == N_FRAMES


def test_worker_killed_mid_run_loses_nothing(inputs, reference, tmp_path):
    ref_out, _ = reference
    box: dict = {}
    with Cluster("local:2") as cluster:
        client = cluster.client

        def go() -> None:
            box["report"] = run_batch(inputs, tmp_path, SETTINGS, client=client)

        t = threading.Thread(target=go)
        t.start()
        victim = None
        deadline = time.monotonic() + 120
        while victim is None and time.monotonic() < deadline and t.is_alive():
            started = [k for k, name in enumerate(("alpha", "beta"))
                       if (tmp_path / name / "0.json").exists()]
            if started:  # kill the worker running the task (batch-<source index>-...) of
                # a session that has written a frame and not finished
                victim = next((w for w, keys in client.processing().items()
                               if any(str(key).startswith(f"batch-{started[0]}-")
                                      for key in keys)), None)
            time.sleep(0.02)
        assert victim is not None
        try:
            client.run(os._exit, 1, workers=[victim])
        except Exception:
            pass
        t.join(timeout=240)
        assert not t.is_alive()
    report = box["report"]
    assert not report.failed
    assert report.skipped >= 1  # the rerun task found the killed one's frames on disk
    assert _results(tmp_path) == _results(ref_out)


def test_corrupt_frame_is_reported_not_fatal(tmp_path, capsys):
    folder = _session_folder(tmp_path / "in", "gamma", 5, n=3)
    (folder / "f01b.npy").write_bytes(b"this is not a numpy file")
    out = tmp_path / "out"
    rc = main(["batch", str(folder), "--out", str(out), "--workflow", "atoms", "--budget", "3",
               "--cold-budget", "5", "--no-progress", "--no-export"])
    assert rc == 1
    failures = json.loads((out / "failures.json").read_text())
    assert [(f["session"], f["source"]) for f in failures] == [("gamma", "f01b.npy")]
    assert "f01b.npy" in capsys.readouterr().err
    written = sorted(p.name for p in (out / "gamma").glob("[0-9]*.json"))
    assert written == ["0.json", "1.json", "3.json"]  # the bad file took seq 2
    assert not (out / "store").exists()


def test_bad_input_is_a_named_error(tmp_path, capsys):
    rc = main(["batch", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "inputs" in capsys.readouterr().err
