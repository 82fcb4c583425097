"""Export a stored session to one HDF5 file (``rewardscope export SESSION --to FILE.h5``).

Why HDF5 and this layout: h5py, HyperSpy and pycroscopy users open it without rewardscope, and
ragged per-frame results (a different number of atoms in every frame) are stored the way
columnar tools expect, as one concatenated table plus an offsets index. Row ``i`` of every
per-frame dataset describes the ``i``-th frame received, in arrival order.

Layout (``n`` frames; ``M`` atoms, ``K`` walls over all frames)::

    /frames            (n, H, W) pixels, or a group /frames/000000 ... when frame shapes differ
    /seq               (n,) int64        frame number from the header (restarts on a new ``start``)
    /t                 (n,) float64      acquisition time (unix s) from the header
    /received_t        (n,) float64      when the service received the frame
    /pixel_size_m      (n,) float64      NaN where the header had none
    /frame_headers     (n,) JSON         the full frame header (meta, origin_m, lattice_px, ...)
    /has_result        (n,) bool
    /atoms             (M, 2) float32    x = column, y = row (px);  frame i: atoms[o[i]:o[i+1]]
    /atoms_offsets     (n+1,) int64      o; frames without a result get an empty slice
    /labels            (M,) int16        same offsets (attribute ``offsets`` names the index)
    /walls             (K, 4) float64    [x0, y0, x1, y1] px, with /walls_offsets (n+1,)
    /params /pareto /result_extra  (n,) JSON strings ("null" without a result)
    /rewards/<name>    (n,) float64      NaN where absent (attribute ``name``: the exact name)
    /n_evaluations     (n,) int64        -1 without a result
    /latency_s /result_t  (n,) float64   NaN without a result
    /<array>           extra result arrays (e.g. /amorphous_mask), by shape:
                       same shape as their frame -> like /frames, (n, H, W), plus
                       /<array>_present (n,) bool; otherwise ragged along axis 0 with
                       /<array>_offsets (e.g. /amorphous_labels, one per atom); otherwise a
                       group of per-frame datasets. Attribute ``wire_name``: the exact name.
                       Arrays of known meaning also get ``units`` and ``columns`` (the
                       meaning of the last axis): the polarization map /cells (x, y px),
                       /polarization (dx, dy px) and /polarization_pm (dx, dy pm), ragged
                       like /atoms, one row per unit cell (:data:`ARRAY_UNITS`).
    /markers           JSON strings of the start/end messages
    /regions           the suggested regions (from regions.rsrec), one row per suggestion in
                       publication order (``k`` rows): /regions/seq (k,) int64 the frame it was
                       made from, /regions/id, /regions/reason, /regions/decision (k,) str
                       (released, approved, rejected, expired, outside_sample, pending,
                       published), /regions/score, /regions/significance (k,) float64,
                       /regions/box_px (k, 4) [x0, y0, x1, y1] px, /regions/box_m (k, 4) m
                       (NaN without a pixel size), /regions/scanned (k,) bool, /regions/t
                       (k,) unix s

Pixels keep their dtype in native byte order; mixed dtypes are promoted without loss
(``numpy.result_type``). Root attributes: ``session``, ``rewardscope_version``,
``protocol_version``, ``created`` (unix s), ``exported``, ``source``, ``frames_layout``, counts
and the state of each log's tail. HyperSpy: when frames are a stack the file is also a valid
HyperSpy file (``hs.load(path, reader="HSPY")``): ``/Experiments/frames/data`` is a hard link to
``/frames`` (no copy) with axes frame / y / x, in nm when every header gives the same
``pixel_size_m``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from rewardscope import __version__, protocol
from rewardscope.plaindata import as_float, plain
from rewardscope.protocol import Result
from rewardscope.storage.sessions import (
    FRAMES_LOG,
    RESULTS_LOG,
    StoredFrame,
    StoredSession,
    iter_frames,
    iter_results,
    load_session,
    resolve_session,
)

FORMAT = "rewardscope-export"
FORMAT_VERSION = 1
HSPY_FORMAT_VERSION = "3.3"
_STR = h5py.string_dtype("utf-8")
ARRAY_UNITS: dict[str, tuple[str, tuple[str, ...]]] = {
    "cells": ("px", ("x", "y")),
    "polarization": ("px", ("dx", "dy")),
    "polarization_pm": ("pm", ("dx", "dy")),
}
"""Units and last-axis column names written as attributes of extra arrays with these wire
names (the per-unit-cell polarization map); other arrays carry none."""
_RESERVED = {"frames", "seq", "t", "received_t", "pixel_size_m", "frame_headers", "has_result",
             "atoms", "atoms_offsets", "labels", "labels_offsets", "walls", "walls_offsets",
             "params", "pareto", "result_extra", "rewards", "n_evaluations", "latency_s",
             "result_t", "markers", "Experiments", "regions"}


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote, for the CLI summary and for callers that log it."""

    path: Path
    session: str
    n_frames: int
    n_results: int
    frames_layout: str
    orphan_results: int
    frames_tail: str | None
    results_tail: str | None


def export_session(session_path_or_name: str | os.PathLike[str], out_h5: str | os.PathLike[str],
                   store_root: str | os.PathLike[str] | None = None, *, overwrite: bool = False,
                   compression: str | None = None) -> ExportReport:
    """Write one stored session to ``out_h5`` (layout in the module docstring).

    ``session_path_or_name`` is a session folder or a session name in ``store_root`` (default
    ``./store``). Memory stays bounded: frames and extra arrays are streamed from the logs a
    second time. The file appears complete or not at all (written aside, then renamed).
    """
    src = resolve_session(session_path_or_name, store_root)
    out = Path(out_h5)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (pass overwrite=True / --force to replace it)")
    sess = load_session(src, arrays=False)
    tmp = out.with_name(out.name + ".partial")
    try:
        with h5py.File(tmp, "w") as h5:
            layout = _write_all(h5, sess, compression)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ExportReport(path=out, session=sess.session, n_frames=len(sess.frames),
                        n_results=sum(f.result is not None for f in sess.frames),
                        frames_layout=layout, orphan_results=sess.orphan_results,
                        frames_tail=sess.frames_log.tail, results_tail=sess.results_log.tail)


def _write_all(h5: h5py.File, sess: StoredSession, compression: str | None) -> str:
    _write_root_attrs(h5, sess)
    _write_frame_index(h5, sess)
    layout = _write_frames(h5, sess, compression)
    h5.attrs["frames_layout"] = layout
    _write_result_columns(h5, sess)
    _write_ragged_results(h5, sess)
    _write_extra_arrays(h5, sess, layout, compression)
    _json_dataset(h5, "markers", [_marker_map(m) for m in sess.markers])
    _write_regions(h5, sess)
    if layout == "stack" and sess.frames:
        _write_hyperspy(h5, sess)
    return layout


# ----------------------------------------------------------------------------- regions

def _write_regions(h5: h5py.File, sess: StoredSession) -> None:
    """/regions: one row per suggested region and the gate's decision about it."""
    rows = sess.suggestions
    grp = h5.create_group("regions")
    grp.attrs["skipped_records"] = sess.regions_log.skipped
    grp["seq"] = np.array([r.seq for r in rows], dtype=np.int64)
    grp["t"] = np.array([r.t for r in rows], dtype=np.float64)
    for key, get in (("id", lambda r: r.id), ("reason", lambda r: r.suggestion["reason"]),
                     ("decision", lambda r: r.decision or "")):
        grp.create_dataset(key, data=[get(r) for r in rows], dtype=_STR, shape=(len(rows),))
    for key in ("score", "significance"):
        grp[key] = np.array([r.suggestion[key] for r in rows], dtype=np.float64)
    for key, units in (("box_px", "px"), ("box_m", "m")):
        box = np.array([r.suggestion.get(key) or [math.nan] * 4 for r in rows],
                       dtype=np.float64).reshape(-1, 4)
        grp[key] = box
        grp[key].attrs.update({"units": units, "columns": ["x0", "y0", "x1", "y1"]})
    grp["scanned"] = np.array([r.scanned for r in rows], dtype=bool)


# ----------------------------------------------------------------------------- metadata

def _write_root_attrs(h5: h5py.File, sess: StoredSession) -> None:
    created = as_float(sess.created)
    attrs = {"format": FORMAT, "format_version": FORMAT_VERSION, "session": sess.session,
             "rewardscope_version": __version__, "protocol_version": protocol.VERSION,
             "created": created, "created_iso": _iso(created), "exported": time.time(),
             "source": str(sess.path.resolve()), "n_frames": len(sess.frames),
             "n_results": sum(f.result is not None for f in sess.frames),
             "orphan_results": sess.orphan_results,
             "skipped_frame_records": sess.frames_log.skipped,
             "skipped_result_records": sess.results_log.skipped,
             "frames_tail": sess.frames_log.tail or "", "results_tail": sess.results_log.tail or ""}
    h5.attrs.update(attrs)


def _iso(t: float) -> str:
    return "" if not math.isfinite(t) else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _write_frame_index(h5: h5py.File, sess: StoredSession) -> None:
    fr = sess.frames
    h5["seq"] = np.array([f.seq for f in fr], dtype=np.int64)
    h5["t"] = np.array([f.t for f in fr], dtype=np.float64)
    h5["received_t"] = np.array([f.received_t for f in fr], dtype=np.float64)
    h5["pixel_size_m"] = np.array([as_float(f.header.pixel_size_m) for f in fr],
                                  dtype=np.float64)
    _json_dataset(h5, "frame_headers", [f.header.to_map() for f in fr])


def _marker_map(m: protocol.SessionMarker) -> dict:
    return {"type": m.kind, "session": m.session, "t": m.t, "meta": m.meta,
            "lattice_px": m.lattice_px, "n_frames": m.n_frames}


def _jsonable(obj: Any) -> Any:
    """msgpack headers may hold bytes (values or keys); JSON cannot, so they become hex."""
    if isinstance(obj, dict):
        return {(k.hex() if isinstance(k, bytes) else str(k)): _jsonable(v)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, bytes):
        return obj.hex()
    return plain(obj) if isinstance(obj, np.generic) else obj


def _json_dataset(h5: h5py.Group, name: str, items: list[Any]) -> None:
    text = [json.dumps(_jsonable(x), ensure_ascii=False, sort_keys=True) for x in items]
    h5.create_dataset(name, data=np.array(text, dtype=object), dtype=_STR)


# ----------------------------------------------------------------------------- frames

def _frame_dtype(sess: StoredSession) -> np.dtype:
    """Common pixel dtype, native byte order; promotion is exact for the protocol's dtypes."""
    if not sess.frames:
        return np.dtype(np.uint8)
    return np.result_type(*{np.dtype(f.header.dtype) for f in sess.frames}).newbyteorder("=")


def _write_frames(h5: h5py.File, sess: StoredSession, compression: str | None) -> str:
    """Stream pixels from frames.rsrec into /frames; returns "stack" or "per_frame"."""
    dt = _frame_dtype(sess)
    shapes = {f.header.shape for f in sess.frames}
    n = len(sess.frames)
    if len(shapes) <= 1:
        h, w = shapes.pop() if shapes else (0, 0)
        ds = h5.create_dataset("frames", shape=(n, h, w), dtype=dt,
                               chunks=(1, h, w) if n else None,
                               compression=compression if n else None)
        for f in _frames_again(sess):
            ds[f.index] = np.asarray(f.pixels, dtype=dt)
        _label_dims(ds, ("frame", "y", "x"))
        ds.attrs["layout"] = "stack"
        return "stack"
    grp = h5.create_group("frames")
    grp.attrs["layout"] = "per_frame"
    for f in _frames_again(sess):
        ds = grp.create_dataset(_index_name(f.index), data=np.asarray(f.pixels, dtype=dt),
                                compression=compression)
        ds.attrs["seq"] = f.seq
    return "per_frame"


def _frames_again(sess: StoredSession) -> Iterator[StoredFrame]:
    """Second pass over frames.rsrec, with pixels, checked against the first.

    Only the frames indexed in the first pass: a live writer may have appended more since.
    """
    count = 0
    with closing(iter_frames(sess.path / FRAMES_LOG)) as frames:
        for f in islice(frames, len(sess.frames)):
            if f.header != sess.frames[f.index].header:
                raise RuntimeError(f"{sess.path / FRAMES_LOG} changed during the export")
            count += 1
            yield f
    if count != len(sess.frames):
        raise RuntimeError(f"{sess.path / FRAMES_LOG} shrank during the export")


def _index_name(i: int) -> str:
    return f"{i:06d}"


def _label_dims(ds: h5py.Dataset, labels: tuple[str, ...]) -> None:
    for dim, label in zip(ds.dims, labels, strict=True):
        dim.label = label


# ----------------------------------------------------------------------------- results

def _column(sess: StoredSession, get: Callable[[Result], Any], fill: Any, dtype: Any) -> np.ndarray:
    return np.array([fill if f.result is None else get(f.result) for f in sess.frames],
                    dtype=dtype)


def _write_result_columns(h5: h5py.File, sess: StoredSession) -> None:
    h5["has_result"] = np.array([f.result is not None for f in sess.frames], dtype=bool)
    h5["n_evaluations"] = _column(sess, lambda r: r.n_evaluations, -1, np.int64)
    h5["latency_s"] = _column(sess, lambda r: r.latency_s, math.nan, np.float64)
    h5["result_t"] = _column(sess, lambda r: r.t, math.nan, np.float64)
    results = [f.result for f in sess.frames]
    _json_dataset(h5, "params", [None if r is None else r.params for r in results])
    _json_dataset(h5, "pareto", [None if r is None else r.pareto for r in results])
    _json_dataset(h5, "result_extra", [None if r is None else r.extra for r in results])
    _write_rewards(h5.create_group("rewards"), results)


def _write_rewards(grp: h5py.Group, results: list[Result | None]) -> None:
    names = sorted({k for r in results if r is not None for k in r.rewards})
    used: set[str] = set()
    for name in names:
        col = np.array([as_float(None if r is None else r.rewards.get(name)) for r in results],
                       dtype=np.float64)
        ds = grp.create_dataset(_h5_name(str(name), used), data=col)
        ds.attrs["name"] = str(name)


def _h5_name(name: str, used: set[str]) -> str:
    """A link name HDF5 accepts ("/" and "." are path syntax) and not taken yet."""
    base = name.replace("/", "_")
    base = base if base not in ("", ".", "..") else f"_{base}"
    cand, k = base, 2
    while cand in used:
        cand, k = f"{base}~{k}", k + 1
    used.add(cand)
    return cand


def _write_ragged(h5: h5py.Group, name: str, parts: list[np.ndarray], trail: tuple[int, ...],
                  dtype: Any, offsets_name: str | None = None) -> np.ndarray:
    """Concatenate per-frame arrays into /name with an (n+1,) offsets index; returns it."""
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in parts], out=offsets[1:])
    data = (np.concatenate([np.asarray(p, dtype=dtype) for p in parts]) if parts
            else np.zeros((0, *trail), dtype=dtype))
    h5.create_dataset(name, data=data.reshape((-1, *trail)))
    offsets_name = offsets_name or f"{name}_offsets"
    if offsets_name not in h5:
        h5[offsets_name] = offsets
    h5[name].attrs["offsets"] = offsets_name
    return offsets


def _write_ragged_results(h5: h5py.File, sess: StoredSession) -> None:
    results = [f.result for f in sess.frames]
    atoms = [np.empty((0, 2), np.float32) if r is None else r.atoms.reshape(-1, 2)
             for r in results]
    labels = [np.empty(0, np.int16) if r is None else r.labels.reshape(-1) for r in results]
    walls = [np.empty((0, 4)) if r is None else _walls_array(r.walls) for r in results]
    _write_ragged(h5, "atoms", atoms, (2,), np.float32)
    same = all(len(a) == len(lb) for a, lb in zip(atoms, labels, strict=True))
    _write_ragged(h5, "labels", labels, (), np.int16, "atoms_offsets" if same else None)
    _write_ragged(h5, "walls", walls, (4,), np.float64)


def _walls_array(walls: list) -> np.ndarray:
    """[x0, y0, x1, y1] segments; anything that is not four numbers is left out."""
    ok = [w for w in walls if isinstance(w, list) and len(w) == 4
          and all(isinstance(c, (int, float)) for c in w)]
    return np.array(ok, dtype=np.float64).reshape(-1, 4)


# ----------------------------------------------------------------------------- extra arrays

@dataclass
class _ExtraPlan:
    """How one extra result array is laid out: "image", "ragged" or "per_frame"."""

    wire_name: str
    h5_name: str
    kind: str
    dtype: np.dtype
    shapes: dict[int, tuple[int, ...]]  # frame index -> shape


def _plan_extras(sess: StoredSession, frame_layout: str) -> list[_ExtraPlan]:
    chosen = _chosen_results(sess)
    per_name: dict[str, dict[int, tuple[np.dtype, tuple[int, ...]]]] = {}
    for i, k in chosen.items():
        for name, spec in sess.published[k].specs.items():
            per_name.setdefault(name, {})[i] = spec
    used = set(_RESERVED)
    plans = []
    for name in sorted(per_name):
        occ = per_name[name]
        dtype = np.result_type(*{d for d, _ in occ.values()}).newbyteorder("=")
        shapes = {i: s for i, (_, s) in occ.items()}
        kind = _extra_kind(sess, shapes, frame_layout)
        plans.append(_ExtraPlan(name, _h5_name(name, used), kind, dtype, shapes))
    return plans


def _chosen_results(sess: StoredSession) -> dict[int, int]:
    """frame index -> index in ``sess.published`` of the result attached to that frame."""
    return {r.frame: k for k, r in enumerate(sess.published) if r.frame is not None}


def _extra_kind(sess: StoredSession, shapes: dict[int, tuple[int, ...]], layout: str) -> str:
    if all(s == sess.frames[i].header.shape for i, s in shapes.items()):
        return "image" if layout == "stack" else "per_frame"
    if all(len(s) >= 1 for s in shapes.values()) and len({s[1:] for s in shapes.values()}) == 1:
        return "ragged"
    return "per_frame"


def _write_extra_arrays(h5: h5py.File, sess: StoredSession, layout: str,
                        compression: str | None) -> None:
    """Create the extra-array datasets, then stream results.rsrec once more to fill them."""
    plans = _plan_extras(sess, layout)
    if not plans:
        return
    n = len(sess.frames)
    sinks = {p.wire_name: _make_sink(h5, p, n, compression) for p in plans}
    for p in plans:
        if p.wire_name in ARRAY_UNITS:
            units, columns = ARRAY_UNITS[p.wire_name]
            h5[p.h5_name].attrs.update({"units": units, "columns": list(columns)})
    chosen = set(_chosen_results(sess).values())
    with closing(iter_results(sess.path / RESULTS_LOG)) as results:
        for k, stored in enumerate(islice(results, len(sess.published))):
            if k not in chosen:
                continue
            if stored.result.seq != sess.published[k].result.seq:
                raise RuntimeError(f"{sess.path / RESULTS_LOG} changed during the export")
            for name, arr in stored.result.arrays.items():
                sinks[name](sess.published[k].frame, arr)


def _make_sink(h5: h5py.File, p: _ExtraPlan, n: int,
               compression: str | None) -> Callable[[int, np.ndarray], None]:
    """A writer ``(frame index, array) -> None`` for one planned extra array."""
    if p.kind == "image":
        return _image_sink(h5, p, n, compression)
    if p.kind == "ragged":
        return _ragged_sink(h5, p, n)
    grp = h5.create_group(p.h5_name)
    grp.attrs.update({"wire_name": p.wire_name, "layout": "per_frame"})

    def put(i: int, a: np.ndarray) -> None:
        grp.create_dataset(_index_name(i), data=np.asarray(a, dtype=p.dtype),
                           compression=compression if a.ndim else None)
    return put


def _image_sink(h5: h5py.File, p: _ExtraPlan, n: int,
                compression: str | None) -> Callable[[int, np.ndarray], None]:
    """(n, H, W) like /frames; rows of frames without the array stay 0 (see ``_present``)."""
    h, w = h5["frames"].shape[1:]
    ds = h5.create_dataset(p.h5_name, shape=(n, h, w), dtype=p.dtype, chunks=(1, h, w),
                           compression=compression, fillvalue=0)
    _label_dims(ds, ("frame", "y", "x"))
    present = np.zeros(n, dtype=bool)
    present[list(p.shapes)] = True
    h5[f"{p.h5_name}_present"] = present
    ds.attrs.update({"wire_name": p.wire_name, "layout": "stack",
                     "present": f"{p.h5_name}_present"})

    def put(i: int, a: np.ndarray) -> None:
        ds[i] = np.asarray(a, dtype=p.dtype)
    return put


def _ragged_sink(h5: h5py.File, p: _ExtraPlan, n: int) -> Callable[[int, np.ndarray], None]:
    offsets = np.zeros(n + 1, dtype=np.int64)
    for i, s in p.shapes.items():
        offsets[i + 1] = s[0]
    np.cumsum(offsets, out=offsets)
    trail = next(iter(p.shapes.values()))[1:]
    ds = h5.create_dataset(p.h5_name, shape=(int(offsets[-1]), *trail), dtype=p.dtype)
    h5[f"{p.h5_name}_offsets"] = offsets
    ds.attrs.update({"wire_name": p.wire_name, "layout": "ragged",
                     "offsets": f"{p.h5_name}_offsets"})

    def put(i: int, a: np.ndarray) -> None:
        if len(a):
            ds[offsets[i]:offsets[i + 1]] = np.asarray(a, dtype=p.dtype)
    return put


# ----------------------------------------------------------------------------- HyperSpy

def _write_hyperspy(h5: h5py.File, sess: StoredSession) -> None:
    """Make the file a valid HyperSpy (HSPY 3.x) file too; the data is a link, not a copy."""
    n, h, w = h5["frames"].shape
    sizes = {f.header.pixel_size_m for f in sess.frames}
    size = sizes.pop() if len(sizes) == 1 else None
    scale, units = (size * 1e9, "nm") if size is not None else (1.0, "px")
    h5.attrs.update({"file_format": "HyperSpy", "file_format_version": HSPY_FORMAT_VERSION})
    exp = h5.create_group("Experiments/frames")
    exp["data"] = h5["frames"]
    axes = (("frame", "", 1.0, n, True), ("y", units, scale, h, False),
            ("x", units, scale, w, False))
    for i, (name, unit, sc, size_i, nav) in enumerate(axes):
        exp.create_group(f"axis-{i}").attrs.update(
            {"name": name, "units": unit, "scale": sc, "offset": 0.0, "size": size_i,
             "navigate": nav})
    exp.create_group("metadata/General").attrs["title"] = sess.session
    exp.create_group("metadata/Signal").attrs["signal_type"] = ""
    exp.create_group("original_metadata").attrs["session"] = sess.session
    if size is not None:
        h5["frames"].attrs["pixel_size_m"] = size
