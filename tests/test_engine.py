"""The reward-driven engine against the simulator's ground truth: quality, warm start, config."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from rewardscope import config
from rewardscope.config import ConfigError
from rewardscope.engine.session import SessionEngine
from rewardscope.science.scoring import labelled_ari, match_points
from rewardscope.simulators.perovskite import PerovskiteSimulator, SimConfig

LATTICE = 12.0


def _settings(**kw) -> config.ServiceConfig:
    base = {"lattice_px": LATTICE, "workflow": "atoms", "deadline_s": 30.0}
    return config.load(None, {**base, **kw})


def _f1(analysis, truth) -> float:
    return match_points(analysis.atoms, truth.atoms, 0.25 * LATTICE).f1


@pytest.mark.parametrize("noise,target", [(0.0, 0.98), (0.35, 0.95)])
def test_atoms_f1_against_truth(noise, target):
    sim = PerovskiteSimulator(SimConfig(shape=(384, 384), noise_sigma=noise, seed=11))
    eng = SessionEngine("t", _settings())
    f1s = [_f1(eng.analyse(sf.pixels, LATTICE, _settings()), sf.truth) for sf in sim.frames(3)]
    assert min(f1s) >= target, f1s


def test_warm_frames_match_a_cold_run_with_five_times_the_budget():
    """After the first frame, a warm budget of 6 is as good as a cold search of 30."""
    sim = PerovskiteSimulator(SimConfig(shape=(384, 384), noise_sigma=0.3, seed=4,
                                        drift_px_per_frame=(0.7, -0.4)))
    warm_cfg = _settings(budget=6, cold_budget=16)
    warm = SessionEngine("warm", warm_cfg)
    warm_f1, cold_f1 = [], []
    for sf in sim.frames(5):
        a = warm.analyse(sf.pixels, LATTICE, warm_cfg)
        if sf.index == 0:
            assert not a.warm_started and a.n_evaluations == 16
            continue
        assert a.warm_started and a.n_evaluations <= 6
        warm_f1.append(_f1(a, sf.truth))
        cold_cfg = _settings(cold_budget=30, seed=sf.index)
        cold_f1.append(_f1(SessionEngine("cold", cold_cfg).analyse(sf.pixels, LATTICE, cold_cfg),
                           sf.truth))
    assert np.mean(warm_f1) >= np.mean(cold_f1) - 0.01, (warm_f1, cold_f1)
    assert min(warm_f1) >= 0.95


def test_parallel_evaluation_gives_the_serial_answer():
    """Two evaluation threads change how candidates are asked (batches of 2, so the search
    path differs), not the quality: same evaluation count, same accuracy against the truth."""
    sim = PerovskiteSimulator(SimConfig(shape=(256, 256), noise_sigma=0.15, seed=5))
    out = {}
    for workers in (1, 2):
        cfg = _settings(workflow="domains", eval_workers=workers, cold_budget=10, budget=6)
        eng = SessionEngine(f"w{workers}", cfg)
        runs = [eng.analyse(sf.pixels, LATTICE, cfg) for sf in sim.frames(2)]
        out[workers] = runs
        assert [a.n_evaluations for a in runs] == [20, 12]
    frames = list(sim.frames(2))
    for runs in out.values():
        for a, sf in zip(runs, frames, strict=True):
            assert _f1(a, sf.truth) >= 0.95  # noise 0.15: the issue asks >= 0.95 at 0.35
            assert labelled_ari(a.atoms, a.labels, sf.truth.atoms, sf.truth.domain,
                                0.25 * LATTICE) >= 0.9
    with pytest.raises(config.ConfigError, match="eval_workers"):
        _settings(eval_workers=-1)


def test_knee_method_and_pareto_are_reported():
    sf = PerovskiteSimulator(SimConfig(shape=(256, 256), noise_sigma=0.2, seed=1)).frame(0)
    for knee in ("euclidean", "chebyshev"):
        cfg = _settings(knee=knee, cold_budget=12)
        a = SessionEngine("k", cfg).analyse(sf.pixels, LATTICE, cfg)
        assert a.pareto and all(p["workflow"] == "atoms" for p in a.pareto)
        assert a.params["atoms"] in [p["params"] for p in a.pareto]
        assert set(a.rewards) == {"count_quality", "implausible_neighbours"}
        assert a.optimizer_s > 0 and a.timings["atoms"] > 0
        assert set(a.hypervolume) == {"atoms"} and a.hypervolume["atoms"] >= 0


def test_user_reward_by_dotted_path_from_toml(tmp_path, monkeypatch):
    (tmp_path / "myrewards.py").write_text(textwrap.dedent('''
        import numpy as np

        def spacing_error(xy, lattice_px):
            """mean |nearest-neighbour distance - a/sqrt(2)| in lattice units"""
            if len(xy) < 2:
                return 1.0
            d = np.sqrt(((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1))
            np.fill_diagonal(d, np.inf)
            return float(np.abs(d.min(1) - lattice_px / np.sqrt(2)).mean() / lattice_px)

        spacing_error.direction = "min"
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    toml = tmp_path / "rs.toml"
    toml.write_text('[analysis]\nworkflow = "atoms"\ncold_budget = 8\n'
                    '[workflows.atoms]\nrewards = ["count_quality", "myrewards:spacing_error"]\n')
    cfg = config.load(toml, {"lattice_px": LATTICE})
    sf = PerovskiteSimulator(SimConfig(shape=(128, 128), seed=2)).frame(0)
    a = SessionEngine("u", cfg).analyse(sf.pixels, LATTICE, cfg)
    assert set(a.rewards) >= {"count_quality", "myrewards:spacing_error"}
    assert a.rewards["myrewards:spacing_error"] < 0.2
    assert _f1(a, sf.truth) >= 0.98


def test_bad_user_reward_is_refused_at_session_start():
    cfg = _settings(rewards={"atoms": ["no_such_module_xyz:thing"]})
    with pytest.raises(ConfigError, match="no_such_module_xyz"):
        SessionEngine("bad", cfg)


def test_state_dict_round_trip_keeps_the_session_warm():
    cfg = _settings(budget=4, cold_budget=8)
    sim = PerovskiteSimulator(SimConfig(shape=(128, 128), seed=3))
    eng = SessionEngine("s", cfg)
    eng.analyse(sim.frame(0).pixels, LATTICE, cfg)
    state = json.loads(json.dumps(eng.state_dict()))
    again = SessionEngine("s", cfg)
    again.load_state_dict(state)
    a = again.analyse(sim.frame(1).pixels, LATTICE, cfg)
    assert a.warm_started and a.n_evaluations <= 4


def test_analyze_command_writes_result_overlay_and_pareto(tmp_path):
    from rewardscope import cli

    sf = PerovskiteSimulator(SimConfig(shape=(192, 192), seed=6, noise_sigma=0.1)).frame(0)
    img = tmp_path / "frame.npy"
    np.save(img, sf.pixels)
    out = tmp_path / "out"
    rc = cli.main(["analyze", str(img), "--lattice-px", str(LATTICE), "--workflow", "atoms",
                   "--budget", "10", "--patience", "0", "--out", str(out), "--no-progress"])
    assert rc == 0
    doc = json.loads((out / "result.json").read_text())
    for key in ("atoms", "labels", "walls", "amorphous_mask", "params", "rewards", "pareto",
                "n_evaluations", "elapsed_s"):
        assert key in doc, key
    assert doc["n_evaluations"] == 10
    # a real analysis, not a placeholder: on a noisy 192^2 frame with 10 evaluations the
    # knee lands at F1 0.96-1.0 depending on the design (the >= 0.98 clean-frame target is
    # test_atoms_f1_against_truth's, on 384^2 frames)
    assert match_points(np.array(doc["atoms"]), sf.truth.atoms, 0.25 * LATTICE).f1 >= 0.95
    for png in ("overlay.png", "pareto.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_help_lists_every_subcommand(capsys):
    from rewardscope import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in cli.SUBCOMMANDS:
        assert name in out
    for name in cli.SUBCOMMANDS:
        with pytest.raises(SystemExit) as e:
            cli.main([name, "--help"])
        assert e.value.code == 0, name


def test_all_workflows_against_ground_truth():
    """Atoms, domains + walls and amorphous regions from one warm-started session: the knee
    of each frame's front meets the ground-truth thresholds on a cold and two warm frames."""
    from rewardscope.science.scoring import labelled_ari, mask_iou, wall_distance_medians

    sim = PerovskiteSimulator(SimConfig(shape=(384, 384), amorphous_regions=1, noise_sigma=0.1,
                                        drift_px_per_frame=(0.4, 0.2), seed=3))
    cfg = _settings(workflow="all", budget=8, cold_budget=16, deadline_s=20.0)
    eng = SessionEngine("all", cfg)
    for sf in sim.frames(3):
        a = eng.analyse(sf.pixels, LATTICE, cfg)
        t = sf.truth
        assert _f1(a, t) >= 0.97
        ari = labelled_ari(a.atoms, a.labels, t.atoms, t.domain, 0.25 * LATTICE)
        assert ari >= 0.9, (sf.index, ari)
        d_det, d_true = wall_distance_medians(np.array(a.walls), np.array(t.walls))
        assert d_det <= LATTICE and d_true <= LATTICE, (sf.index, d_det, d_true)
        iou = mask_iou(a.arrays["amorphous_mask"], t.amorphous_mask)
        assert iou >= 0.6, (sf.index, iou)
        # no domain is claimed where the frame's own analysis found the order gone; the
        # amorphous workflow's own labels (ordered / disordered) are kept there
        mask = a.arrays["amorphous_mask"]
        col, row = np.rint(a.atoms[:, 0]).astype(int), np.rint(a.atoms[:, 1]).astype(int)
        inside = mask[np.clip(row, 0, mask.shape[0] - 1), np.clip(col, 0, mask.shape[1] - 1)]
        assert inside.sum() > 10 and np.all(a.labels[inside] == -1)
        assert np.any(a.arrays["amorphous_labels"][inside] >= 0)
        assert a.warm_started is (sf.index > 0)
        assert {"wall_curvature", "region_compactness", "count_quality"} <= set(a.rewards)


def test_zooming_within_a_session_keeps_one_search_per_magnification():
    """A closed loop zooms inside one session: a frame at a new magnification gets its own
    (cold) search instead of the other magnification's warm start, and going back is warm."""
    from rewardscope.science.scoring import labelled_ari

    cfg = config.load(None, {"workflow": "domains", "deadline_s": 30.0, "budget": 6,
                             "cold_budget": 12})
    frames = {a: PerovskiteSimulator(SimConfig(shape=(256, 256), lattice_px=a, n_walls=2,
                                               seed=21)).frame(0) for a in (12.0, 24.0)}
    eng = SessionEngine("zoom", cfg)
    seen = []
    for a in (12.0, 24.0, 12.0, 24.0):
        sf = frames[a]
        res = eng.analyse(sf.pixels, None, cfg)
        f1 = match_points(res.atoms, sf.truth.atoms, 0.25 * a).f1
        seen.append((a, res.warm_started, f1))
        assert f1 >= 0.97, seen
        assert labelled_ari(res.atoms, res.labels, sf.truth.atoms, sf.truth.domain,
                            tol=0.3 * a) >= 0.95, seen
    assert [w for _, w, _ in seen] == [False, False, True, True]
    assert len({k.partition("@")[2].partition("#")[0] for k in eng.searches}) == 2  # "#regime"


def test_chain_waves_group_workflows_that_read_nothing_of_each_other():
    from rewardscope.engine.session import chain_waves, resolve_chain
    from rewardscope.workflows import workflow_class

    def waves(spec):
        return chain_waves([workflow_class(n) for n in resolve_chain(spec)])

    assert waves("all") == [1, 2]  # atoms; then domains and amorphous, which read the atoms
    assert waves(["atoms", "domains", "amorphous", "latent"]) == [1, 3]
    assert waves("atoms") == [1]
    assert waves(["atoms", "domains"]) == [1, 1]


def test_a_wave_side_by_side_gives_the_one_after_another_result(monkeypatch):
    """Domains and amorphous in threads, merged in chain order, and the cell refined on the
    atoms beside them: the same analysis, frame after frame (warm starts included), as
    running them one after the other."""
    from concurrent.futures import Future

    from rewardscope.engine import session as session_mod

    beside = session_mod._beside

    def in_turn(fn, *args):  # the refinement where it stands, before the next wave
        done = Future()
        done.set_result(fn(*args))
        return done

    cfg = _settings(workflow="all", budget=4, cold_budget=6, deadline_s=600.0,
                    cold_deadline_s=600.0)
    sim = PerovskiteSimulator(SimConfig(shape=(160, 160), seed=9, noise_sigma=0.1,
                                        amorphous_regions=1))
    out = {}
    for concurrent in (True, False):
        monkeypatch.setattr(session_mod, "CONCURRENT_WAVES", concurrent)
        monkeypatch.setattr(session_mod, "_beside", beside if concurrent else in_turn)
        eng = SessionEngine("w", cfg)
        out[concurrent] = [eng.analyse(sim.frame(k).pixels, LATTICE, cfg) for k in range(3)]
    for a, b in zip(out[True], out[False], strict=True):
        assert np.array_equal(a.atoms, b.atoms) and np.array_equal(a.labels, b.labels)
        assert a.walls == b.walls and a.params == b.params and a.rewards == b.rewards
        assert set(a.arrays) == set(b.arrays)
        for k in a.arrays:
            assert np.array_equal(a.arrays[k], b.arrays[k], equal_nan=True), k
        assert [e["workflow"] for e in a.pareto] == [e["workflow"] for e in b.pareto]
        assert a.scalars["lattice"] == b.scalars["lattice"]


def test_a_clearing_mask_unlabels_the_atoms_inside_it():
    """``cleared_labels``: atoms whose rounded pixel is set in a ``clears_labels`` mask get -1,
    the others keep theirs; the input is not modified; no mask set changes nothing; and only
    a mask output may clear labels."""
    from rewardscope.engine.session import cleared_labels
    from rewardscope.workflows import LABELS, MASK, Output

    atoms = np.array([[1.0, 1.0], [5.4, 2.6], [8.0, 8.0], [-3.0, 20.0]], np.float32)
    labels = np.array([0, 1, 2, 1], np.int16)
    mask = np.zeros((10, 10), bool)
    mask[3, 5] = True  # (x 5.4, y 2.6) rounds to row 3, column 5
    mask[9, 0] = True  # (-3, 20) is clipped onto the frame's corner (row 9, column 0)
    out = cleared_labels(atoms, labels, [mask])
    assert out.tolist() == [0, -1, 2, -1] and labels.tolist() == [0, 1, 2, 1]
    assert cleared_labels(atoms, labels, [np.zeros((10, 10), bool)]) is labels
    assert cleared_labels(atoms, labels, []) is labels
    with pytest.raises(ValueError, match="clears_labels"):
        Output("labels", LABELS, clears_labels=True)
    assert Output("mask", MASK, clears_labels=True).clears_labels
