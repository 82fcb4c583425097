"""Session store naming/reading and the HDF5 export, on stores built from real wire messages."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from rewardscope import __version__, cli, protocol
from rewardscope.protocol import Result
from rewardscope.storage import sessions as store
from rewardscope.storage.hdf5 import export_session
from rewardscope.storage.recordlog import RecordWriter

SESSION = "sample-7/area-3"
SHAPE = (24, 32)
PIXEL = 3.2e-11


def make_frames(session: str, shapes: list[tuple[int, int]] | None = None) -> list[np.ndarray]:
    """Five frames of different content (and dtypes, to exercise exact promotion)."""
    rng = np.random.default_rng(7)
    shapes = shapes or [SHAPE] * 5
    dtypes = [np.uint16, np.uint16, np.dtype(">u2"), np.uint8, np.uint16]
    return [(rng.random(s) * 200 + 10 * i).astype(d) for i, (s, d) in
            enumerate(zip(shapes, dtypes, strict=True))]


def make_results(session: str, frames: list[np.ndarray]) -> dict[int, Result]:
    """Results with 3, 0, -, 5, 1 atoms; seq 2 has none, seq 3 the amorphous arrays."""
    rng = np.random.default_rng(11)
    out = {}
    for seq, n_atoms in ((0, 3), (1, 0), (3, 5), (4, 1)):
        arrays = {}
        if seq == 3:
            arrays["amorphous_mask"] = rng.random(frames[seq].shape) > 0.5
            arrays["amorphous_labels"] = np.arange(n_atoms, dtype=np.int16) - 1
        rewards = {"atom_count": float(n_atoms), "spacing": 0.1 * seq}
        if seq == 4:
            rewards = {"wall/length": 12.5}  # a name with "/" and others absent
        out[seq] = Result(
            session=session, seq=seq, latency_s=0.01 * (seq + 1), n_evaluations=seq + 2,
            params={"atoms": {"sigma": 1.5 + seq}, "domains": {"k": seq}},
            rewards=rewards, pareto=[{"workflow": "atoms", "params": {}, "rewards": rewards}],
            walls=[[float(seq), 1.0, 2.0, 3.0 + w] for w in range(seq % 3)],
            atoms=rng.random((n_atoms, 2)).astype(np.float32) * 30,
            labels=rng.integers(-1, 4, n_atoms).astype(np.int16),
            extra={"warm_started": seq > 0, "hypervolume": 0.5}, arrays=arrays,
            t=100.5 + seq)
    return out


def write_session(root: Path, session: str = SESSION, frames: list[np.ndarray] | None = None,
                  *, info: bool = True) -> tuple[Path, list[np.ndarray], dict[int, Result]]:
    """A store folder the way the daemon writes it: exact wire parts, record time = receipt."""
    frames = make_frames(session) if frames is None else frames
    results = make_results(session, frames)
    path = (store.init_session_dir(root, session, created=99.0) if info
            else store.session_path(root, session))
    path.mkdir(parents=True, exist_ok=True)
    with RecordWriter(path / store.FRAMES_LOG) as w:
        w.write(protocol.encode_start(session, t=99.0, lattice_px=12.0), t=99.0)
        for seq, px in enumerate(frames):
            w.write(protocol.encode_frame(px, session=session, seq=seq, t=50.0 + seq,
                                          pixel_size_m=PIXEL, meta={"n": seq}), t=100.0 + seq)
        w.write(protocol.encode_end(session, t=110.0, n_frames=len(frames)), t=110.0)
    with RecordWriter(path / store.RESULTS_LOG) as w:
        for seq, res in results.items():
            w.write(protocol.encode_result(res), t=100.5 + seq)
    return path, frames, results


def ragged(h5: h5py.File, name: str, i: int, offsets: str | None = None) -> np.ndarray:
    o = h5[offsets or h5[name].attrs["offsets"]]
    return h5[name][o[i]:o[i + 1]]


@pytest.fixture
def stored(tmp_path: Path) -> tuple[Path, list[np.ndarray], dict[int, Result]]:
    return write_session(tmp_path / "store")


# ----------------------------------------------------------------------------- export

def test_export_round_trip_is_exact(stored, tmp_path: Path) -> None:
    path, frames, results = stored
    rep = export_session(SESSION, tmp_path / "out.h5", store_root=path.parent)
    assert (rep.n_frames, rep.n_results, rep.frames_layout) == (5, 4, "stack")
    with h5py.File(tmp_path / "out.h5", "r") as h5:
        assert h5["frames"].shape == (5, *SHAPE)
        for i, px in enumerate(frames):
            np.testing.assert_array_equal(h5["frames"][i], px)
        np.testing.assert_array_equal(h5["seq"][:], np.arange(5))
        np.testing.assert_array_equal(h5["t"][:], 50.0 + np.arange(5))
        np.testing.assert_array_equal(h5["received_t"][:], 100.0 + np.arange(5))
        np.testing.assert_array_equal(h5["pixel_size_m"][:], [PIXEL] * 5)
        np.testing.assert_array_equal(h5["has_result"][:], [1, 1, 0, 1, 1])
        assert h5["atoms_offsets"][:].tolist() == [0, 3, 3, 3, 8, 9]
        assert h5["atoms"].dtype == np.float32 and h5["labels"].dtype == np.int16
        params = h5["params"].asstr()[:]
        for i in range(5):
            res = results.get(i)
            if res is None:
                assert ragged(h5, "atoms", i).shape == (0, 2)
                assert ragged(h5, "walls", i).shape == (0, 4)
                assert json.loads(params[i]) is None
                assert h5["n_evaluations"][i] == -1 and math.isnan(h5["latency_s"][i])
                continue
            np.testing.assert_array_equal(ragged(h5, "atoms", i), res.atoms)
            np.testing.assert_array_equal(ragged(h5, "labels", i), res.labels)
            np.testing.assert_array_equal(ragged(h5, "walls", i),
                                          np.array(res.walls).reshape(-1, 4))
            assert json.loads(params[i]) == res.params
            assert json.loads(h5["pareto"].asstr()[i]) == res.pareto
            assert json.loads(h5["result_extra"].asstr()[i]) == res.extra
            assert h5["n_evaluations"][i] == res.n_evaluations
            assert h5["latency_s"][i] == res.latency_s and h5["result_t"][i] == res.t
        check_rewards(h5, results)
        check_amorphous(h5, results)
        check_root_attrs(h5)


def check_rewards(h5: h5py.File, results: dict[int, Result]) -> None:
    names = {h5["rewards"][k].attrs["name"]: k for k in h5["rewards"]}
    assert set(names) == {"atom_count", "spacing", "wall/length"}
    for name, key in names.items():
        want = [results[i].rewards.get(name, math.nan) if i in results else math.nan
                for i in range(5)]
        np.testing.assert_array_equal(h5["rewards"][key][:], want)


def check_amorphous(h5: h5py.File, results: dict[int, Result]) -> None:
    mask = h5["amorphous_mask"]
    assert mask.dtype == bool and mask.shape == (5, *SHAPE)
    np.testing.assert_array_equal(h5["amorphous_mask_present"][:], [0, 0, 0, 1, 0])
    np.testing.assert_array_equal(mask[3], results[3].arrays["amorphous_mask"])
    assert not mask[0].any()
    assert h5["amorphous_labels"].attrs["layout"] == "ragged"
    np.testing.assert_array_equal(ragged(h5, "amorphous_labels", 3),
                                  results[3].arrays["amorphous_labels"])
    assert ragged(h5, "amorphous_labels", 0).size == 0


def check_root_attrs(h5: h5py.File) -> None:
    a = h5.attrs
    assert a["session"] == SESSION and a["rewardscope_version"] == __version__
    assert a["protocol_version"] == protocol.VERSION and a["created"] == 99.0
    assert a["frames_tail"] == "" and a["results_tail"] == "" and a["orphan_results"] == 0
    markers = [json.loads(s) for s in h5["markers"].asstr()[:]]
    assert [m["type"] for m in markers] == ["start", "end"]
    assert json.loads(h5["frame_headers"].asstr()[2])["meta"] == {"n": 2}


def test_export_is_readable_by_hyperspy_reader(stored, tmp_path: Path) -> None:
    hspy = pytest.importorskip("rsciio.hspy")
    path, frames, _ = stored
    export_session(path, tmp_path / "out.h5")
    (sig,) = hspy.file_reader(str(tmp_path / "out.h5"))
    np.testing.assert_array_equal(sig["data"], np.stack([f.astype(np.uint16) for f in frames]))
    nav, y, x = sig["axes"]
    assert nav["navigate"] and not y["navigate"] and x["units"] == "nm"
    assert x["scale"] == pytest.approx(PIXEL * 1e9)
    assert sig["metadata"]["General"]["title"] == SESSION


def test_truncated_results_log_exports_complete_records(stored, tmp_path: Path) -> None:
    path, frames, results = stored
    log = path / store.RESULTS_LOG
    with open(log, "r+b") as f:
        f.truncate(log.stat().st_size - 7)  # cut into the last result (seq 4)
    rep = export_session(path, tmp_path / "out.h5")
    assert rep.results_tail == "partial_body" and rep.n_results == 3
    with h5py.File(tmp_path / "out.h5", "r") as h5:
        np.testing.assert_array_equal(h5["has_result"][:], [1, 1, 0, 1, 0])
        np.testing.assert_array_equal(ragged(h5, "atoms", 3), results[3].atoms)
        assert ragged(h5, "atoms", 4).shape == (0, 2)
        np.testing.assert_array_equal(h5["frames"][4], frames[4])
        assert h5.attrs["results_tail"] == "partial_body"


def test_mixed_frame_shapes_go_per_frame(tmp_path: Path) -> None:
    shapes = [(24, 32), (24, 32), (16, 16), (20, 12), (24, 32)]
    path, frames, results = write_session(tmp_path / "store", "mixed",
                                          make_frames("mixed", shapes))
    rep = export_session(path, tmp_path / "out.h5")
    assert rep.frames_layout == "per_frame"
    with h5py.File(tmp_path / "out.h5", "r") as h5:
        assert sorted(h5["frames"]) == [f"{i:06d}" for i in range(5)]
        for i, px in enumerate(frames):
            np.testing.assert_array_equal(h5["frames"][f"{i:06d}"][:], px)
        assert list(h5["amorphous_mask"]) == ["000003"]
        np.testing.assert_array_equal(h5["amorphous_mask/000003"][:],
                                      results[3].arrays["amorphous_mask"])
        assert "Experiments" not in h5


def test_empty_session_and_refusing_to_overwrite(tmp_path: Path) -> None:
    path = store.init_session_dir(tmp_path / "store", "empty")
    RecordWriter(path / store.FRAMES_LOG).close()
    rep = export_session("empty", tmp_path / "out.h5", store_root=tmp_path / "store")
    assert rep.n_frames == 0
    with h5py.File(tmp_path / "out.h5", "r") as h5:
        assert h5["frames"].shape == (0, 0, 0) and h5["atoms_offsets"][:].tolist() == [0]
    with pytest.raises(FileExistsError):
        export_session(path, tmp_path / "out.h5")


# ----------------------------------------------------------------------------- store

ODD_NAMES = ["a/b", "a_b", "a\\b", "..", ".", "", "-rf", " ", "café", "cafe", "日本語", "x" * 5000,
             "x" * 4999, "A", "a", "a\x00b", "CON", "nul.txt", "sample-7/area-3"]


def test_session_dirnames_are_safe_and_distinct(tmp_path: Path) -> None:
    names = [store.session_dirname(s) for s in ODD_NAMES]
    assert len({n.lower() for n in names}) == len(ODD_NAMES)  # even on case-insensitive disks
    for n in names:
        assert 0 < len(n) <= 80 and n[0] not in ".-" and n.isascii()
        assert all(c.isalnum() or c in "._-" for c in n)
    assert store.session_dirname("café").startswith("cafe-")
    assert store.session_dirname("sample-7/area-3").startswith("sample-7_area-3-")
    root = tmp_path / "store"
    for s in ODD_NAMES:
        p = store.init_session_dir(root, s)
        assert p.parent == root and p.is_dir()
    assert [s for s, _ in store.list_sessions(root)] == sorted(ODD_NAMES)
    assert sorted(os.listdir(root)) == sorted(names)


def test_list_sessions_without_session_json_reads_the_log(tmp_path: Path) -> None:
    root = tmp_path / "store"
    write_session(root, "no-info/ü", info=False)
    write_session(root)
    (root / "not-a-session").mkdir()
    found = store.list_sessions(root)
    assert [s for s, _ in found] == ["no-info/ü", SESSION]
    assert found[0][1] == store.session_path(root, "no-info/ü")
    sess = store.load_session(found[0][1])
    assert sess.session == "no-info/ü" and sess.created == 99.0
    assert [f.seq for f in sess.frames] == list(range(5))
    assert sorted(sess.results) == [0, 1, 3, 4] and sess.frames[2].result is None
    assert store.list_sessions(tmp_path / "absent") == []


def test_results_follow_an_instrument_restart(tmp_path: Path) -> None:
    """seq restarts at 0 after a new start; each result pairs with the frame before it."""
    path = store.init_session_dir(tmp_path, "s")
    px = [np.full((4, 4), v, np.uint8) for v in range(4)]
    with RecordWriter(path / store.FRAMES_LOG) as w:
        for k, (seq, t) in enumerate(((0, 1.0), (1, 2.0), (0, 3.0), (1, 4.0))):
            w.write(protocol.encode_frame(px[k], session="s", seq=seq, t=t), t=t)
    res = make_results("s", px)
    with RecordWriter(path / store.RESULTS_LOG) as w:
        w.write(protocol.encode_result(res[1]), t=2.5)  # first run: only seq 1 analysed
        w.write(protocol.encode_result(res[0]), t=3.5)  # second run: seq 0
    sess = store.load_session(path)
    assert [f.result.seq if f.result else None for f in sess.frames] == [None, 1, 0, None]


# ----------------------------------------------------------------------------- CLI

def test_cli_export(stored, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _, _ = stored
    out = tmp_path / "cli.h5"
    root = str(path.parent)
    assert cli.main(["export", SESSION, "--to", str(out), "--store", root]) == 0
    assert "exported 5 frames" in capsys.readouterr().out
    assert cli.main(["export", SESSION, "--to", str(out), "--store", root]) == 1
    assert "exists" in capsys.readouterr().err
    assert cli.main(["export", str(path), "--to", str(out), "--force", "--compress"]) == 0
    with h5py.File(out, "r") as h5:
        assert h5["frames"].compression == "gzip" and h5.attrs["session"] == SESSION
    capsys.readouterr()
    assert cli.main(["export", "nope", "--to", str(out), "--store", root]) == 1
    assert "no session 'nope'" in capsys.readouterr().err
    assert cli.main(["export", "--list", "--store", root]) == 0
    assert capsys.readouterr().out == f"{SESSION}\t{path}\n"
    assert cli.main(["export", SESSION]) == 2
    assert not list(tmp_path.glob("*.partial"))
