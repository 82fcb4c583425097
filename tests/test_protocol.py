"""Wire protocol: round trips and one named error per kind of bad input."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewardscope import protocol
from rewardscope.live.ingest import Ingest
from rewardscope.protocol import ProtocolError


def _frame(pixels=None, **kw):
    pixels = np.arange(12, dtype="<u2").reshape(3, 4) if pixels is None else pixels
    kw.setdefault("session", "s")
    kw.setdefault("seq", 0)
    return protocol.encode_frame(pixels, **kw)


def _with_header(parts, **changes):
    h = msgpack.unpackb(parts[1])
    for k, v in changes.items():
        if v is KeyError:
            h.pop(k)
        else:
            h[k] = v
    return [parts[0], msgpack.packb(h), *parts[2:]]


def _code(parts, limits=protocol.DEFAULT_LIMITS):
    with pytest.raises(ProtocolError) as info:
        protocol.decode_instrument(parts, limits)
    return info.value.code


@pytest.mark.parametrize("dtype", sorted(protocol.FRAME_DTYPES))
def test_frame_round_trip_every_dtype(dtype):
    px = (np.arange(20).reshape(4, 5) % 7).astype(dtype)
    f = protocol.decode_instrument(_frame(px, seq=3, lattice_px=12.5, pixel_size_m=1e-11,
                                          origin_m=(1.0, 2.0), meta={"detector": "HAADF"}))
    assert isinstance(f, protocol.Frame)
    assert f.header.dtype == np.dtype(dtype).str
    np.testing.assert_array_equal(f.pixels, px)
    assert (f.seq, f.header.lattice_px, f.header.origin_m) == (3, 12.5, (1.0, 2.0))
    assert f.header.meta == {"detector": "HAADF"}


def test_start_end_round_trip():
    m = protocol.decode_instrument(protocol.encode_start("run", lattice_px=10))
    assert (m.kind, m.session, m.lattice_px) == ("start", "run", 10.0)
    e = protocol.decode_instrument(protocol.encode_end("run", n_frames=7))
    assert (e.kind, e.n_frames) == ("end", 7)


@pytest.mark.parametrize("parts,code", [
    ([b"frame", b"\xc1\xff garbage", b""], "bad_header"),
    ([b"xyz", b"", b""], "bad_topic"),
    ([b"frame", b"x"], "bad_parts"),
    ([], "bad_parts"),
    ([b"frame", msgpack.packb([1, 2]), b""], "bad_header"),
])
def test_structural_errors(parts, code):
    assert _code(parts) == code


def test_header_errors_are_named():
    good = _frame()
    assert _code(_with_header(good, v=2)) == "unknown_version"
    assert _code(_with_header(good, seq=KeyError)) == "missing_key"
    assert _code(_with_header(good, seq="7")) == "wrong_type"
    assert _code(_with_header(good, seq=True)) == "wrong_type"
    assert _code(_with_header(good, seq=-1)) == "wrong_type"
    assert _code(_with_header(good, shape=[3])) == "wrong_type"
    assert _code(_with_header(good, shape=[0, 4])) == "wrong_type"
    assert _code(_with_header(good, dtype="<c16")) == "bad_dtype"
    assert _code(_with_header(good, dtype="object")) == "bad_dtype"
    assert _code(_with_header(good, lattice_px=-3.0)) == "wrong_type"
    assert _code(_with_header(good, meta=[1])) == "wrong_type"
    assert _code(_with_header(good, type="start")) == "wrong_type"


def test_buffer_and_size_errors():
    good = _frame()
    assert _code([good[0], good[1], good[2][:-1]]) == "buffer_size"
    assert _code([good[0], good[1], good[2] + b"\0\0"]) == "buffer_size"
    assert _code(_with_header(good, shape=[100000, 100000])) == "oversized"
    small = protocol.Limits(max_dim=2)
    assert _code(good, small) == "oversized"
    assert _code([good[0], b"\x80" * 70000, good[2]]) == "oversized"
    assert _code(good, protocol.Limits(max_message_bytes=10)) == "oversized"


def test_non_finite_pixels():
    px = np.ones((4, 4), "<f4")
    px[1, 2] = np.nan
    assert _code(_frame(px)) == "non_finite"
    px[1, 2] = np.inf
    assert _code(_frame(px)) == "non_finite"


def test_result_round_trip_with_extra_arrays():
    atoms = np.random.default_rng(0).random((5, 2)).astype(np.float32) * 100
    r = protocol.Result(session="s", seq=4, latency_s=0.1, n_evaluations=7,
                        params={"threshold": 0.1}, rewards={"qc": 0.01},
                        pareto=[{"params": {"threshold": 0.1}, "rewards": {"qc": 0.01}}],
                        walls=[[0, 0, 10, 10]], atoms=atoms,
                        labels=np.array([0, 1, -1, 1, 0], np.int16),
                        extra={"warm_started": True},
                        arrays={"amorphous_mask": np.eye(4, dtype=bool)})
    back = protocol.decode_result(protocol.encode_result(r))
    np.testing.assert_array_equal(back.atoms, atoms)
    np.testing.assert_array_equal(back.labels, r.labels)
    np.testing.assert_array_equal(back.arrays["amorphous_mask"], np.eye(4, dtype=bool))
    assert back.extra["warm_started"] is True
    assert back.walls == [[0.0, 0.0, 10.0, 10.0]]
    assert back.pareto == r.pareto


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=4))
def test_decoder_never_crashes_on_random_bytes(parts):
    try:
        protocol.decode_instrument(parts)
    except ProtocolError as exc:
        assert exc.code in protocol.ERROR_CODES


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "type", "session", "seq", "t", "shape", "dtype",
                                        "meta", "lattice_px", "origin_m", "pixel_size_m"]),
                       st.one_of(st.integers(-5, 10**6), st.text(max_size=8), st.none(),
                                 st.floats(allow_nan=True), st.booleans(),
                                 st.lists(st.integers(-3, 50), max_size=3))),
       st.binary(max_size=256))
def test_decoder_validates_arbitrary_headers(header, buf):
    try:
        f = protocol.decode_instrument([b"frame", msgpack.packb(header), buf])
    except ProtocolError as exc:
        assert exc.code in protocol.ERROR_CODES
    else:  # anything accepted is internally consistent
        assert f.pixels.nbytes == len(buf)
        assert f.pixels.shape == tuple(header["shape"])


def test_ingest_counts_gaps_duplicates_restarts_exactly():
    ing = Ingest()
    ing.accept(protocol.encode_start("a"))
    assert ing.accept(_frame(session="a", seq=0)).gap == 0
    assert ing.accept(_frame(session="a", seq=3)).gap == 2
    with pytest.raises(ProtocolError, match="duplicate"):
        ing.accept(_frame(session="a", seq=3))
    with pytest.raises(ProtocolError, match="non_monotonic"):
        ing.accept(_frame(session="a", seq=1))
    ing.accept(protocol.encode_start("a"))  # instrument restarted mid-session
    assert ing.accept(_frame(session="a", seq=1)).gap == 1
    end = ing.accept(protocol.encode_end("a", n_frames=5))
    assert end.tail_gap == 3
    assert ing.gaps_total == 2 + 1 + 3
    assert ing.errors == {"duplicate": 1, "non_monotonic_seq": 1}


def test_ingest_joins_mid_session_without_counting_leading_frames():
    ing = Ingest()
    assert ing.accept(_frame(session="late", seq=40)).gap == 0
    assert ing.accept(_frame(session="late", seq=41)).gap == 0


def test_ingest_gives_frames_the_session_start_lattice_unless_the_header_has_one():
    ing = Ingest()
    ing.accept(protocol.encode_start("a", lattice_px=11.0))
    assert ing.accept(_frame(session="a", seq=0)).frame.header.lattice_px == 11.0
    assert ing.accept(_frame(session="a", seq=1, lattice_px=13.5)).frame.header.lattice_px == 13.5
    ing.accept(protocol.encode_start("a", lattice_px=9.0))  # a restart may change it
    assert ing.accept(_frame(session="a", seq=0)).frame.header.lattice_px == 9.0
    ing.accept(protocol.encode_start("a"))  # ... or drop it: the config value applies again
    assert ing.accept(_frame(session="a", seq=0)).frame.header.lattice_px is None
    ing.accept(protocol.encode_start("b", lattice_px=10.0))
    ing.accept(protocol.encode_end("b", n_frames=0))
    assert ing.accept(_frame(session="b", seq=0)).frame.header.lattice_px is None  # ended
    assert ing.accept(_frame(session="late", seq=5)).frame.header.lattice_px is None
