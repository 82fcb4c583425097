"""Still images as a session: load .npy/.tif/.png/.dm3/.dm4/.emd/.hspy files and turn them into
messages.

Why: saved micrographs are the easiest test input for the live service. Each image (or each
frame of a stack) becomes one ``frame`` message between a ``start`` and an ``end``, exactly as
an instrument would send them, so ``rewardscope replay`` and the record-log tools treat imported
stills and recorded sessions alike. Pixel dtypes the protocol allows are kept; others become
``<f4``. The pixel size travels in the frame header when the file format records it.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rewardscope import protocol
from rewardscope.storage.recordlog import Record, RecordWriter

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
RASTER_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
TIFF_EXTS = (".tif", ".tiff")
RSCIIO_EXTS = (".dm3", ".dm4", ".emd", ".hspy", ".hdf5")  # .hspy/.hdf5: HyperSpy's format
SUPPORTED_EXTS = (".npy", *TIFF_EXTS, *RASTER_EXTS, *RSCIIO_EXTS)

# Rec. 709 luma, the weights skimage.color.rgb2gray uses; applied to raw values (no rescaling).
LUMA = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)

# Length units as written by ImageJ, DigitalMicrograph, EMD and pint, in metres.
_UNIT_M = {
    "m": 1.0, "meter": 1.0, "metre": 1.0, "cm": 1e-2, "mm": 1e-3,
    "um": 1e-6, "µm": 1e-6, "μm": 1e-6, "micron": 1e-6, "microns": 1e-6, "micrometer": 1e-6,
    "nm": 1e-9, "nanometer": 1e-9, "pm": 1e-12,
    "å": 1e-10, "a": 1e-10, "angstrom": 1e-10, "ångström": 1e-10,
}


class ImageFormatError(ValueError):
    """The file cannot be read as an image (unknown extension, bad shape, missing reader)."""


# ----------------------------------------------------------------------------- loading

def load_image(path: PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """First 2-D frame of an image file and its metadata (``pixel_size_m`` when known).

    The metadata has ``source`` (file name), ``format``, ``frame_index``, ``n_frames`` and,
    where the format records a calibrated length unit, ``pixel_size_m``.
    """
    frames = iter_image_frames(path)
    try:
        return next(frames)
    except StopIteration:
        raise ImageFormatError(f"{path}: no 2-D image in the file") from None
    finally:
        frames.close()


def iter_image_frames(path: PathLike) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
    """Every 2-D frame of an image file (one for a plain image, n for a stack), with metadata."""
    p = Path(path)
    ext = p.suffix.lower()
    if ext == ".npy":
        stack, meta = _read_npy(p)
    elif ext in TIFF_EXTS:
        stack, meta = _read_tiff(p)
    elif ext in RASTER_EXTS:
        stack, meta = _read_raster(p)
    elif ext in RSCIIO_EXTS:
        stack, meta = _read_rsciio(p)
    else:
        raise ImageFormatError(f"{p}: unsupported image type '{ext}' "
                               f"(supported: {', '.join(SUPPORTED_EXTS)})")
    n = stack.shape[0]
    meta = {"source": p.name, **meta, "n_frames": n}
    for i in range(n):
        yield np.array(stack[i]), {**meta, "frame_index": i}  # a copy: no mmap leaks out


def _as_stack(arr: np.ndarray, what: str) -> np.ndarray:
    """(rows, cols) -> (1, rows, cols); (..., rows, cols) -> (n, rows, cols)."""
    if arr.ndim < 2:
        raise ImageFormatError(f"{what}: array of shape {arr.shape} is not an image")
    if 0 in arr.shape:
        raise ImageFormatError(f"{what}: empty array of shape {arr.shape}")
    return arr.reshape((-1, *arr.shape[-2:]))


def luminance(rgb: np.ndarray) -> np.ndarray:
    """(…, 3|4) colour -> float32 luma on the original value scale (alpha ignored)."""
    return np.tensordot(rgb[..., :3].astype(np.float32), LUMA, axes=([-1], [0]))


def _read_npy(p: Path) -> tuple[np.ndarray, dict[str, Any]]:
    # mmap so that a big stack is read frame by frame; never unpickle.
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise ImageFormatError(f"{p}: not a plain numpy array ({exc})") from None
    return _as_stack(arr, str(p)), {"format": "npy"}


def _read_tiff(p: Path) -> tuple[np.ndarray, dict[str, Any]]:
    import tifffile

    with tifffile.TiffFile(p) as tif:
        series = tif.series[0]
        axes = series.axes
        arr = series.asarray()
        meta: dict[str, Any] = {"format": "tiff"}
        size = _tiff_pixel_size(tif)
        if size is not None:
            meta["pixel_size_m"] = size
    if "S" in axes and arr.shape[axes.index("S")] in (3, 4):  # colour samples
        arr = luminance(np.moveaxis(arr, axes.index("S"), -1))
        axes = axes.replace("S", "")
    elif "S" in axes:  # odd sample count: keep the first sample
        arr = np.take(arr, 0, axis=axes.index("S"))
        axes = axes.replace("S", "")
    if "Y" in axes and "X" in axes:
        arr = np.moveaxis(arr, [axes.index("Y"), axes.index("X")], [-2, -1])
    return _as_stack(arr, str(p)), meta


def _tiff_pixel_size(tif: Any) -> float | None:
    """Pixel size from FEI/Thermo tags, ImageJ units or centimetre resolution tags."""
    fei = getattr(tif, "fei_metadata", None) if getattr(tif, "is_fei", False) else None
    if fei:
        size = _positive(fei.get("Scan", {}).get("PixelWidth"))
        if size is not None:
            return size
    page = tif.pages[0]
    xres = page.tags.get("XResolution")
    if xres is None:
        return None
    num, den = xres.value if isinstance(xres.value, tuple) else (xres.value, 1)
    per_unit = _positive(num / den if den else None)
    if per_unit is None:
        return None
    ij = tif.imagej_metadata if getattr(tif, "is_imagej", False) else None
    if ij and ij.get("unit"):
        unit = _unit_to_m(str(ij["unit"]))
        return None if unit is None else unit / per_unit
    unit_tag = page.tags.get("ResolutionUnit")
    if unit_tag is not None and int(unit_tag.value) == 3:  # centimetre; inch means print DPI
        return 1e-2 / per_unit
    return None


def _read_raster(p: Path) -> tuple[np.ndarray, dict[str, Any]]:
    import imageio.v3 as iio

    if p.suffix.lower() == ".png" and _png_is_16bit_colour(p):
        log.warning("%s: 16-bit colour PNG; the Pillow reader keeps only 8 bits per channel", p)
    arr = np.asarray(iio.imread(p))
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = luminance(arr)
    elif arr.ndim == 3 and arr.shape[-1] == 2:  # grey + alpha
        arr = arr[..., 0]
    return _as_stack(arr, str(p)), {"format": p.suffix.lower().lstrip(".")}


def _png_is_16bit_colour(p: Path) -> bool:
    with open(p, "rb") as f:
        head = f.read(29)
    if len(head) < 29 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return False
    bit_depth, colour_type = struct.unpack(">BB", head[24:26])
    return bit_depth == 16 and colour_type in (2, 6)


def _read_rsciio(p: Path) -> tuple[np.ndarray, dict[str, Any]]:
    ext = p.suffix.lower()
    try:
        if ext == ".emd":
            from rsciio.emd import file_reader
        elif ext in (".hspy", ".hdf5"):
            from rsciio.hspy import file_reader
        else:
            from rsciio.digitalmicrograph import file_reader
    except ImportError as exc:
        raise ImageFormatError(
            f"{p}: reading {ext} files needs the optional package 'rosettasciio' "
            "(pip install rosettasciio, or install rewardscope[formats])") from exc
    try:
        signals = file_reader(str(p), lazy=False)
    except Exception as exc:  # the readers raise many kinds; name the file either way
        raise ImageFormatError(f"{p}: rosettasciio could not read it ({exc})") from exc
    for sig in signals:
        data = np.asarray(sig.get("data"))
        axes = sorted(sig.get("axes", []), key=lambda a: a.get("index_in_array", 0))
        n_signal = sum(1 for a in axes if not a.get("navigate", False))
        if data.ndim < 2 or data.dtype.kind not in "biufc" or (axes and n_signal < 2):
            continue
        meta: dict[str, Any] = {"format": ext.lstrip(".")}
        title = sig.get("metadata", {}).get("General", {}).get("title")
        if isinstance(title, str) and title:
            meta["title"] = title[:200]
        if len(axes) == data.ndim:
            x_axis = axes[-1]
            unit = _unit_to_m(str(x_axis.get("units") or ""))
            scale = _positive(x_axis.get("scale"))
            if unit is not None and scale is not None:
                meta["pixel_size_m"] = scale * unit
        return _as_stack(data, str(p)), meta
    raise ImageFormatError(f"{p}: no 2-D image signal in the file")


def _unit_to_m(unit: str) -> float | None:
    u = unit.strip().replace("\\u00B5", "µ").replace("\\u00b5", "µ").lower()
    return _UNIT_M.get(u)


def _positive(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


# ----------------------------------------------------------------------------- messages

def to_wire_array(arr: np.ndarray) -> np.ndarray:
    """C-contiguous 2-D array in a protocol dtype: kept when allowed, else ``<f4``.

    Non-finite pixels (which the service rejects) become 0 with a warning.
    """
    a = np.asarray(arr)
    if a.dtype.kind == "c":
        a = np.abs(a)
    elif a.dtype.kind == "b":
        a = a.astype(np.uint8)
    if a.dtype.str not in protocol.FRAME_DTYPES:
        a = a.astype("<f4")
    if a.dtype.kind == "f":
        bad = ~np.isfinite(a)
        if bad.any():
            log.warning("replacing %d non-finite pixels with 0", int(bad.sum()))
            a = np.where(bad, a.dtype.type(0), a)
    return np.ascontiguousarray(a)


def session_records(paths: Sequence[PathLike], session: str, lattice_px: float | None = None,
                    *, t0: float | None = None, interval_s: float = 0.0,
                    pixel_size_m: float | None = None) -> Iterator[Record]:
    """Start, one frame per image (stacks give several), end, as timed :class:`Record` s.

    Times are synthetic, ``t0 + seq * interval_s``; they go into the headers and the records
    alike, so a replay paces the stills ``interval_s`` apart. ``pixel_size_m`` overrides what
    the files say.
    """
    t0 = time.time() if t0 is None else float(t0)
    files = [Path(p) for p in paths]
    limits = protocol.DEFAULT_LIMITS
    yield Record(t0, protocol.encode_start(
        session, t=t0, lattice_px=lattice_px,
        meta={"source": "stills", "n_files": len(files)}))
    seq = 0
    for path in files:
        for arr, meta in iter_image_frames(path):
            pixels = to_wire_array(arr)
            rows, cols = pixels.shape
            if max(rows, cols) > limits.max_dim or rows * cols > limits.max_pixels:
                log.warning("%s: frame %dx%d exceeds the service's default size cap",
                            path, rows, cols)
            t = t0 + seq * interval_s
            size = pixel_size_m if pixel_size_m is not None else meta.get("pixel_size_m")
            frame_meta = {k: meta[k] for k in ("source", "format", "frame_index", "title")
                          if k in meta}
            yield Record(t, protocol.encode_frame(
                pixels, session=session, seq=seq, t=t, pixel_size_m=size,
                lattice_px=lattice_px, meta=frame_meta))
            seq += 1
    t_end = t0 + seq * interval_s
    yield Record(t_end, protocol.encode_end(session, t=t_end, n_frames=seq))
    log.info("stills session %s: %d frames from %d files", session, seq, len(files))


def images_to_session(paths: Sequence[PathLike], session: str,
                      lattice_px: float | None = None, **kwargs: Any) -> Iterator[list[bytes]]:
    """The messages (multipart parts) of :func:`session_records`, without the times."""
    for rec in session_records(paths, session, lattice_px, **kwargs):
        yield rec.parts


def default_session_name(paths: Sequence[PathLike]) -> str:
    return f"stills-{Path(paths[0]).stem}" if paths else "stills"


def write_records(records: Iterable[Record], out_path: PathLike, *, fsync: bool = False) -> int:
    with RecordWriter(out_path, fsync=fsync) as w:
        for rec in records:
            w.write(rec.parts, t=rec.t)
        return w.count


def import_images(paths: Sequence[PathLike], out_path: PathLike, session: str | None = None,
                  lattice_px: float | None = None, *, interval_s: float = 1.0,
                  pixel_size_m: float | None = None) -> int:
    """Write images as one session into a record log (for ``rewardscope replay``).

    Returns the number of messages written (frames + 2). The file is written in full or
    removed, so a bad image never leaves a half session behind.
    """
    if not paths:
        raise ImageFormatError("no images given")
    name = session or default_session_name(paths)
    try:
        n = write_records(session_records(paths, name, lattice_px, interval_s=interval_s,
                                          pixel_size_m=pixel_size_m), out_path)
    except BaseException:
        Path(out_path).unlink(missing_ok=True)
        raise
    log.info("imported %d images as session %s into %s", n - 2, name, out_path)
    return n
