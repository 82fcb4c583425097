"""Still-image import: loaders per format, protocol messages, record-log import and replay."""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import zmq

from rewardscope import protocol
from rewardscope.cli import importer
from rewardscope.simulators.replay import replay
from rewardscope.storage.recordlog import read_records
from rewardscope.storage.stills import (
    ImageFormatError,
    images_to_session,
    import_images,
    iter_image_frames,
    load_image,
)

RNG = np.random.default_rng(1)


def luma(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0].astype(np.float32) * np.float32(0.2125)
            + rgb[..., 1].astype(np.float32) * np.float32(0.7154)
            + rgb[..., 2].astype(np.float32) * np.float32(0.0721))


# ----------------------------------------------------------------------------- loaders

def test_npy_image_and_stack(tmp_path: Path) -> None:
    img = RNG.random((32, 40))
    np.save(tmp_path / "a.npy", img)
    arr, meta = load_image(tmp_path / "a.npy")
    assert arr.dtype == np.float64 and np.array_equal(arr, img)
    assert meta["format"] == "npy" and meta["source"] == "a.npy"
    assert "pixel_size_m" not in meta
    stack = RNG.integers(0, 60000, (3, 8, 9)).astype(np.uint16)
    np.save(tmp_path / "s.npy", stack)
    frames = list(iter_image_frames(tmp_path / "s.npy"))
    assert len(frames) == 3 and all(m["n_frames"] == 3 for _, m in frames)
    for i, (a, m) in enumerate(frames):
        assert m["frame_index"] == i and np.array_equal(a, stack[i])


def test_npy_refuses_pickles_and_non_images(tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ImageFormatError):
        load_image(tmp_path / "obj.npy")
    np.save(tmp_path / "v.npy", np.arange(5))
    with pytest.raises(ImageFormatError):
        load_image(tmp_path / "v.npy")


def test_tiff_dtypes_pixel_size_and_stack(tmp_path: Path) -> None:
    img = RNG.integers(0, 65535, (30, 50)).astype(np.uint16)
    # 2e-10 m pixels as centimetre resolution: 5e7 pixels per cm.
    tifffile.imwrite(tmp_path / "a.tif", img, resolution=(5e7, 5e7),
                     resolutionunit="CENTIMETER")
    arr, meta = load_image(tmp_path / "a.tif")
    assert arr.dtype == np.uint16 and np.array_equal(arr, img)
    assert meta["pixel_size_m"] == pytest.approx(2e-10)

    f32 = RNG.random((16, 17)).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tiff", f32)
    arr, meta = load_image(tmp_path / "f.tiff")
    assert arr.dtype == np.float32 and np.array_equal(arr, f32)
    assert "pixel_size_m" not in meta

    stack = RNG.integers(0, 255, (3, 12, 14)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    frames = list(iter_image_frames(tmp_path / "stack.tif"))
    assert [m["frame_index"] for _, m in frames] == [0, 1, 2]
    for i, (a, _) in enumerate(frames):
        assert np.array_equal(a, stack[i])
    first, _ = load_image(tmp_path / "stack.tif")
    assert np.array_equal(first, stack[0])


def test_tiff_imagej_units_and_rgb(tmp_path: Path) -> None:
    stack = RNG.random((2, 10, 11)).astype(np.float32)
    tifffile.imwrite(tmp_path / "ij.tif", stack, imagej=True, resolution=(1 / 0.05, 1 / 0.05),
                     metadata={"unit": "nm", "axes": "TYX"})
    frames = list(iter_image_frames(tmp_path / "ij.tif"))
    assert len(frames) == 2 and np.array_equal(frames[1][0], stack[1])
    assert frames[0][1]["pixel_size_m"] == pytest.approx(0.05e-9)

    rgb = RNG.integers(0, 255, (9, 7, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    arr, _ = load_image(tmp_path / "rgb.tif")
    assert arr.shape == (9, 7) and np.allclose(arr, luma(rgb), atol=1e-4)


def test_png_uint8_uint16_rgb_rgba(tmp_path: Path) -> None:
    g8 = RNG.integers(0, 255, (20, 24)).astype(np.uint8)
    g16 = RNG.integers(0, 65535, (20, 24)).astype(np.uint16)
    rgb = RNG.integers(0, 255, (20, 24, 3)).astype(np.uint8)
    rgba = RNG.integers(0, 255, (20, 24, 4)).astype(np.uint8)
    for name, a in [("g8", g8), ("g16", g16), ("rgb", rgb), ("rgba", rgba)]:
        iio.imwrite(tmp_path / f"{name}.png", a)
    arr, meta = load_image(tmp_path / "g8.png")
    assert arr.dtype == np.uint8 and np.array_equal(arr, g8) and meta["format"] == "png"
    arr, _ = load_image(tmp_path / "g16.png")
    assert arr.dtype == np.uint16 and np.array_equal(arr, g16)
    for name, a in [("rgb", rgb), ("rgba", rgba)]:
        arr, _ = load_image(tmp_path / f"{name}.png")
        assert arr.dtype == np.float32 and arr.shape == (20, 24)
        assert np.allclose(arr, luma(a), atol=1e-3)


def test_unknown_and_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "x.xyz").write_bytes(b"??")
    with pytest.raises(ImageFormatError, match="unsupported"):
        load_image(tmp_path / "x.xyz")
    # Garbage .dm3: a clear error whether or not rosettasciio is installed.
    (tmp_path / "bad.dm3").write_bytes(b"\x00" * 64)
    with pytest.raises(ImageFormatError, match=r"rosettasciio|bad\.dm3"):
        load_image(tmp_path / "bad.dm3")


def _write_emd_berkeley(path: Path, data: np.ndarray, scale_nm: float) -> None:
    """EMD 0.2 (Berkeley/NCEM): datasets are stored transposed, dim1 is the fastest axis."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        f.attrs["version_major"] = 0
        f.attrs["version_minor"] = 2
        g = f.create_group("data/haadf")
        g.attrs["emd_group_type"] = 1
        g.create_dataset("data", data=data.T)
        names = ["x", "y", "t"][: data.ndim]
        for i, name in enumerate(names, start=1):
            n = data.shape[data.ndim - i]
            dim = g.create_dataset(f"dim{i}", data=np.arange(n) * scale_nm)
            dim.attrs["name"] = name
            dim.attrs["units"] = "[n_m]" if name != "t" else "[s]"


def test_emd_berkeley_via_rosettasciio(tmp_path: Path) -> None:
    pytest.importorskip("rsciio")
    img = RNG.integers(0, 4000, (20, 30)).astype(np.uint16)
    _write_emd_berkeley(tmp_path / "a.emd", img, 0.05)
    arr, meta = load_image(tmp_path / "a.emd")
    assert np.array_equal(arr, img) and arr.dtype == np.uint16
    assert meta["format"] == "emd"
    assert meta["pixel_size_m"] == pytest.approx(0.05e-9)
    stack = RNG.random((3, 8, 10)).astype(np.float32)
    _write_emd_berkeley(tmp_path / "s.emd", stack, 0.1)
    frames = list(iter_image_frames(tmp_path / "s.emd"))
    assert len(frames) == 3
    for i, (a, m) in enumerate(frames):
        assert np.array_equal(a, stack[i])
        assert m["pixel_size_m"] == pytest.approx(0.1e-9)


# ----------------------------------------------------------------------------- messages

def test_images_to_session_decodes_and_keeps_dtypes(tmp_path: Path) -> None:
    arrays = {
        "u16.npy": RNG.integers(0, 60000, (8, 9)).astype(np.uint16),
        "f8.npy": RNG.random((8, 9)),
        "i8.npy": RNG.integers(-5, 5, (8, 9)).astype(np.int64),
        "f2.npy": RNG.random((8, 9)).astype(np.float16),
        "b.npy": RNG.random((8, 9)) > 0.5,
        "be.npy": RNG.random((8, 9)).astype(">f4"),
    }
    expect_dtype = {"u16.npy": "<u2", "f8.npy": "<f8", "i8.npy": "<f4", "f2.npy": "<f4",
                    "b.npy": "|u1", "be.npy": ">f4"}
    for name, a in arrays.items():
        np.save(tmp_path / name, a)
    img = RNG.integers(0, 255, (6, 5)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "cal.tif", img, resolution=(5e7, 5e7),
                     resolutionunit="CENTIMETER")
    paths = [tmp_path / n for n in arrays] + [tmp_path / "cal.tif"]
    msgs = list(images_to_session(paths, "stills-1", lattice_px=6.0, t0=100.0,
                                  interval_s=0.5))
    decoded = [protocol.decode_instrument(m) for m in msgs]
    assert isinstance(decoded[0], protocol.SessionMarker) and decoded[0].kind == "start"
    assert decoded[0].lattice_px == 6.0 and decoded[0].session == "stills-1"
    end = decoded[-1]
    assert isinstance(end, protocol.SessionMarker) and end.kind == "end"
    assert end.n_frames == len(paths)
    frames = decoded[1:-1]
    assert [f.seq for f in frames] == list(range(len(paths)))
    assert [f.header.t for f in frames] == [100.0 + 0.5 * i for i in range(len(paths))]
    for f, name in zip(frames, arrays, strict=False):
        assert f.header.dtype == expect_dtype[name], name
        assert f.header.lattice_px == 6.0
        assert f.header.meta["source"] == name
        assert np.allclose(f.pixels, arrays[name].astype(np.float64), atol=1e-3), name
    cal = frames[-1]
    assert cal.header.dtype == "|u1" and np.array_equal(cal.pixels, img)
    assert cal.header.pixel_size_m == pytest.approx(2e-10)


def test_non_finite_pixels_are_replaced(tmp_path: Path) -> None:
    a = RNG.random((4, 4)).astype(np.float32)
    a[1, 2] = np.nan
    a[3, 3] = np.inf
    np.save(tmp_path / "nan.npy", a)
    msgs = list(images_to_session([tmp_path / "nan.npy"], "s"))
    frame = protocol.decode_instrument(msgs[1])
    assert np.isfinite(frame.pixels).all() and frame.pixels[1, 2] == 0


# ----------------------------------------------------------------------------- import + replay

def test_import_then_replay_round_trip(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", RNG.random((16, 16)).astype(np.float32))
    tifffile.imwrite(tmp_path / "b.tif", RNG.integers(0, 999, (2, 16, 16)).astype(np.uint16),
                     photometric="minisblack")
    iio.imwrite(tmp_path / "c.png", RNG.integers(0, 255, (16, 16)).astype(np.uint8))
    out = tmp_path / "stills.rsrec"
    parser = argparse.ArgumentParser()
    importer.add_arguments(parser)
    args = parser.parse_args([str(tmp_path / n) for n in ("a.npy", "b.tif", "c.png")]
                             + ["--out", str(out), "--session", "imp", "--lattice-px", "5",
                                "--interval", "0.05"])
    assert importer.run(args) == 0
    records = read_records(out)
    assert len(records) == 6  # start, 4 frames, end
    assert [round(r.t - records[0].t, 6) for r in records[1:-1]] == [0.0, 0.05, 0.1, 0.15]
    assert protocol.decode_instrument(records[-1].parts).n_frames == 4
    assert import_images([tmp_path / "a.npy"], tmp_path / "one.rsrec") == 3

    box: dict = {}
    bound = threading.Event()

    def on_bound(ep: str) -> None:
        box["ep"] = ep
        bound.set()

    th = threading.Thread(target=lambda: box.setdefault(
        "sent", replay(out, "tcp://127.0.0.1:*", speed=1.0, on_bound=on_bound)), daemon=True)
    th.start()
    assert bound.wait(10)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(box["ep"])
    got = []
    try:
        deadline = time.monotonic() + 10
        while len(got) < len(records) and time.monotonic() < deadline:
            if sub.poll(200, zmq.POLLIN):
                got.append(sub.recv_multipart())
    finally:
        sub.close()
    th.join(10)
    assert got == [r.parts for r in records]
    assert box["sent"] == len(records)


def test_replay_images_directly(tmp_path: Path) -> None:
    imgs = []
    for i in range(2):
        a = RNG.integers(0, 255, (10, 12)).astype(np.uint8)
        imgs.append(a)
        iio.imwrite(tmp_path / f"i{i}.png", a)
    box: dict = {}
    bound = threading.Event()

    def on_bound(ep: str) -> None:
        box["ep"] = ep
        bound.set()

    th = threading.Thread(target=lambda: box.setdefault("sent", replay(
        [tmp_path / "i0.png", tmp_path / "i1.png"], "tcp://127.0.0.1:*", speed=0,
        mode="push", session="direct", lattice_px=4.0, on_bound=on_bound)), daemon=True)
    th.start()
    assert bound.wait(10)
    pull = zmq.Context.instance().socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.connect(box["ep"])
    try:
        got = []
        while len(got) < 4:
            assert pull.poll(10_000, zmq.POLLIN)
            got.append(protocol.decode_instrument(pull.recv_multipart()))
    finally:
        pull.close()
    th.join(10)
    assert [getattr(m, "kind", "frame") for m in got] == ["start", "frame", "frame", "end"]
    assert all(m.session == "direct" for m in got)
    assert np.array_equal(got[1].pixels, imgs[0]) and np.array_equal(got[2].pixels, imgs[1])
    assert got[1].header.lattice_px == 4.0
