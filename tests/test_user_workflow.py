"""The user workflow of docs/WORKFLOWS.md, as written there, offline (`analyze`) and live
(`serve` over real loopback sockets), with no engine edit; and the REWARDS.md examples."""

from __future__ import annotations

import importlib
import json
import re
import sys
import time
from pathlib import Path

import loopback
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from rewardscope import cli, config, protocol
from rewardscope.engine import resolve_chain
from rewardscope.live.daemon import Daemon
from rewardscope.science.scoring import match_points
from rewardscope.simulators.perovskite import PerovskiteSimulator, SimConfig

DOCS = Path(__file__).resolve().parents[1] / "docs"
LATTICE = 12.0
USER_WF = "columns:ColumnClasses"


def python_blocks(md: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", md.read_text(), flags=re.S)


@pytest.fixture
def user_module(tmp_path, monkeypatch) -> Path:
    """docs/WORKFLOWS.md's module, written to an importable folder under its own name."""
    block = next(b for b in python_blocks(DOCS / "WORKFLOWS.md") if b.startswith("# columns.py"))
    (tmp_path / "columns.py").write_text(block)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("columns", None)


def _frame(seed: int, shape=(160, 160)):
    return PerovskiteSimulator(SimConfig(shape=shape, lattice_px=LATTICE, seed=seed)).frame(0)


def _class_ari(atoms: np.ndarray, labels: np.ndarray, truth) -> float:
    """ARI of the column classes against the true A/B sites, on matched atoms."""
    m = match_points(np.asarray(atoms, float), truth.atoms, tol=0.3 * LATTICE)
    pairs = np.asarray(m.pairs)
    return adjusted_rand_score(truth.site[pairs[:, 1]], np.asarray(labels)[pairs[:, 0]])


def test_chain_is_ordered_from_declared_needs(user_module):
    # the user workflow needs atoms: a producer is added in front of it
    assert resolve_chain(USER_WF) == ("atoms", USER_WF)
    assert resolve_chain([USER_WF, "atoms"]) == ("atoms", USER_WF)
    assert resolve_chain("all") == ("atoms", "domains", "amorphous")
    assert resolve_chain("domains") == ("atoms", "domains")


def test_user_workflow_offline_through_analyze(user_module, tmp_path):
    sf = _frame(4)
    img = tmp_path / "frame.npy"
    np.save(img, sf.pixels)
    out = tmp_path / "out"
    rc = cli.main(["analyze", str(img), "--lattice-px", str(LATTICE), "--workflow",
                   f"atoms,{USER_WF}", "--budget", "8", "--out", str(out), "--no-progress"])
    assert rc == 0
    doc = json.loads((out / "result.json").read_text())
    assert set(doc["params"]) == {"atoms", "columns"}
    assert {"class_contrast", "class_imbalance"} <= set(doc["rewards"])
    assert set(doc["hypervolume"]) == {"atoms", "columns"}
    classes = np.load(out / doc["column_class"])
    intensity = np.load(out / doc["column_intensity"])
    assert len(classes) == len(intensity) == len(doc["atoms"])
    np.testing.assert_array_equal(classes, doc["labels"])  # first labels producer wins
    assert _class_ari(doc["atoms"], classes, sf.truth) >= 0.9
    assert doc["rewards"]["class_imbalance"] < 0.1


@pytest.mark.slow
def test_user_workflow_live_through_serve(user_module):
    rig = loopback.Rig(lattice_px=LATTICE, workflow=["atoms", USER_WF], budget=4, cold_budget=8)
    try:
        frames = [_frame(seed) for seed in (5, 6)]
        got: list[protocol.Result] = []
        rig.instrument.start_session("user-wf", lattice_px=LATTICE)
        for sf in frames:
            rig.instrument.send_frame(sf.pixels)
            msg = rig.wait_for(lambda m: isinstance(m, protocol.Result)
                               or (isinstance(m, tuple) and m[0] == "error"), 60)
            assert isinstance(msg, protocol.Result), msg
            got.append(msg)
        assert len(got) == 2
        for sf, res in zip(frames, got, strict=True):
            assert set(res.params) == {"atoms", "columns"}
            assert {"column_class", "column_intensity"} <= set(res.arrays)
            assert len(res.arrays["column_intensity"]) == len(res.atoms)
            assert _class_ari(res.atoms, res.labels, sf.truth) >= 0.9
        assert got[1].extra["warm_started"]
    finally:
        rig.close()


def test_unknown_user_workflow_is_refused_with_its_name():
    cfg = config.load(None, {"workflow": ["atoms", "no_such_pkg_xyz:Thing"]})
    with pytest.raises(config.ConfigError, match="no_such_pkg_xyz"):
        Daemon(cfg)


def test_rewards_md_examples_run(tmp_path, monkeypatch):
    """Every python block of docs/REWARDS.md runs, and its user reward works in the engine."""
    blocks = python_blocks(DOCS / "REWARDS.md")
    assert blocks
    module = next(b for b in blocks if b.startswith("# myrewards.py"))
    (tmp_path / "myrewards.py").write_text(module)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("myrewards", None)  # another test's module of the same name
    try:
        for block in blocks:
            if block is module:
                importlib.import_module("myrewards")  # as a user's module, by its name
            else:
                exec(compile(block, "REWARDS.md", "exec"), {})
        from rewardscope.engine import SessionEngine

        cfg = config.load(None, {"workflow": "atoms", "cold_budget": 6, "lattice_px": LATTICE,
                                 "rewards": {"atoms": ["count_quality",
                                                       "myrewards:column_contrast"]}})
        sf = _frame(7, shape=(128, 128))
        a = SessionEngine("r", cfg).analyse(sf.pixels, LATTICE, cfg)
        assert a.rewards["column_contrast"] > 1.0  # columns are brighter than the frame mean
    finally:
        sys.modules.pop("myrewards", None)


def test_rewards_md_lists_every_context_argument():
    from rewardscope.science.rewards import CONTEXT_ARGUMENTS

    text = (DOCS / "REWARDS.md").read_text()
    section = text.split("## Arguments a reward may ask for", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `(\w+)` \|", section, flags=re.M)
    assert documented == list(CONTEXT_ARGUMENTS)


def test_engine_context_provides_the_documented_arguments():
    from rewardscope.engine.session import reward_context
    from rewardscope.science.rewards import CONTEXT_ARGUMENTS
    from rewardscope.workflows import Evaluation, FrameContext, make_workflow

    wf = make_workflow("domains")
    ctx = FrameContext(image=np.zeros((32, 32), np.float32), lattice_px=LATTICE,
                       atoms=np.zeros((3, 2)))
    ev = Evaluation(rewards={}, output={"labels": np.zeros(3, np.int16), "walls": [],
                                        "wall_points": [], "bic_per_site": 1.5})
    context = reward_context(ctx, wf, ev)
    assert set(CONTEXT_ARGUMENTS) <= set(context)
    assert context["n_found"] == 3 and context["bic_per_site"] == 1.5
    assert context["segments"].shape == (0, 4) and context["mask"] is None


def test_protocol_md_lists_every_result_field():
    """PROTOCOL.md's result header and array tables = a result encoded with every workflow on."""
    from rewardscope.engine import SessionEngine
    from rewardscope.live.publish import result_message

    cfg = config.load(None, {"workflow": ["atoms", "domains", "amorphous", "latent"],
                             "cold_budget": 2, "cold_deadline_s": 120.0, "lattice_px": LATTICE})
    sf = _frame(8, shape=(128, 128))
    frame = protocol.decode_instrument(protocol.encode_frame(sf.pixels, session="doc", seq=0,
                                                             pixel_size_m=3e-11))
    analysis = SessionEngine("doc", cfg).analyse(frame.pixels, LATTICE, cfg,
                                                 pixel_size_m=frame.header.pixel_size_m)
    parts = result_message(frame, analysis, time.monotonic())
    header = protocol.unpack_map(parts[1], protocol.RESULT_LIMITS)
    arrays = {a["name"] for a in header["arrays"]}

    text = (DOCS / "PROTOCOL.md").read_text()
    section = text.split('### `[b"result", header, *arrays]`', 1)[1].split("\n### ", 1)[0]
    header_table, array_table = section.split("Arrays (raw", 1)
    documented_header = {n for row in re.findall(r"^\| ([^|]+?) \|", header_table, flags=re.M)
                         for n in re.findall(r"`([^`]+)`", row)}
    documented_arrays = {re.findall(r"`([^`]+)`", row)[0]
                         for row in re.findall(r"^\| (`[^|]+?) \|", array_table, flags=re.M)}
    assert set(header) == documented_header
    assert arrays == documented_arrays


BROKEN = '''
import numpy as np
from skopt.space import Real
from rewardscope.workflows import ATOMS, SCALAR, Evaluation, Output, Workflow


class Unencodable(Workflow):
    """Scores fine, but outputs a scalar the wire cannot carry."""

    name = "unencodable"
    space = (Real(0.0, 1.0, name="x"),)
    rewards = ("count_quality",)
    needs = (ATOMS,)
    produces = (Output("thing", SCALAR),)

    def evaluate(self, ctx, params):
        return Evaluation(rewards={"count_quality": params["x"]}, output={"thing": object()})
'''


def test_unencodable_output_costs_one_frame_not_the_service(tmp_path, monkeypatch):
    (tmp_path / "broken_wf.py").write_text(BROKEN)
    monkeypatch.syspath_prepend(str(tmp_path))
    rig = loopback.Rig(lattice_px=LATTICE, cold_budget=2, budget=2,
                       workflow=["broken_wf:Unencodable"])
    try:
        rig.instrument.start_session("broken")
        errors = []
        for _ in range(2):
            rig.instrument.send_frame(_frame(9, shape=(96, 96)).pixels)
            msg = rig.wait_for(lambda m: isinstance(m, tuple) and m[0] == "error", 60)
            if msg is not None:
                errors.append(msg[1])
        assert [e["code"] for e in errors] == ["analysis_failed"] * 2  # both frames answered
        assert rig.thread.is_alive() and rig.daemon._worker.is_alive()
    finally:
        rig.close()
        sys.modules.pop("broken_wf", None)


def test_analyze_names_an_unreadable_image_and_exits_2(tmp_path, capsys) -> None:
    from rewardscope import cli

    junk = tmp_path / "junk.npy"
    junk.write_text("not an array")
    for path in (tmp_path / "missing.npy", junk):
        rc = cli.main(["analyze", str(path), "--out", str(tmp_path / "out"), "--no-progress",
                       "--no-pictures"])
        assert rc == 2
        assert f"cannot read {path}" in capsys.readouterr().err
    assert not (tmp_path / "out" / "result.json").exists()


def test_analyze_spends_its_budget_however_slow_the_machine(monkeypatch) -> None:
    """Offline analysis has no deadline: a clock that runs 1 s per reading (a slow machine,
    or numba's cache still cold on the first run after install) changes nothing."""
    from rewardscope.cli.analyze import analyze
    from rewardscope.engine import session
    from rewardscope.optimize import mobo

    class SlowClock:
        t = 0.0

        @classmethod
        def perf_counter(cls) -> float:
            cls.t += 1.0
            return cls.t

    frame = PerovskiteSimulator(SimConfig(shape=(128, 128), lattice_px=12.0,
                                          noise_sigma=0.1, seed=5)).frame(0).pixels
    reference, _ = analyze(frame, 12.0, workflow="atoms", budget=10)
    monkeypatch.setattr(mobo, "time", SlowClock)
    monkeypatch.setattr(session, "time", SlowClock)
    slow, _ = analyze(frame, 12.0, workflow="atoms", budget=10)
    assert SlowClock.t > 2 * 6.0  # past the live cold-frame deadline many times over
    assert slow.n_evaluations == reference.n_evaluations == 10
    np.testing.assert_array_equal(slow.atoms, reference.atoms)
    assert slow.params == reference.params
