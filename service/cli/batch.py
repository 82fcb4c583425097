"""``rewardscope batch INPUTS... --out DIR``: reprocess recorded sessions, HDF5 exports and image
folders, in this process or on a Dask cluster (``--cluster local:N | tcp://host:8786``).

Inputs, each one or more sessions:

* a session folder of the store (``session.json``, ``frames.rsrec``) or a store root holding
  several (``rewardscope serve --store``);
* a record log (``.rsrec``, from ``record`` or ``import``): one session per session name in it;
* an HDF5 export (``.h5``/``.hdf5`` written by ``rewardscope export``);
* an image folder (``.npy``, ``.tif``, ``.png``, ... sorted by name; stacks give several frames)
  or one image file; the session is named after the folder (or the file).

Outputs, under ``DIR``:

* ``DIR/<session>/<seq>.json``: one result per frame with the keys of ``analyze``'s
  ``result.json`` (written by the same function), its arrays as ``<seq>.<array>.npy``; a seq
  seen twice in a session (an instrument restart) writes ``<seq>-<index>.json``;
* ``DIR/store/``: the same session store the live service writes (frames and results record
  logs), and ``DIR/<session>.h5``: its HDF5 export, as ``rewardscope export`` writes it;
* ``DIR/failures.json``: every frame that could not be read or analysed (also printed).

One task per session: its frames are read from disk one at a time and analysed in order by one
warm :class:`~rewardscope.engine.SessionEngine` on one worker; sessions run in parallel across
workers. Resumable: a frame whose ``<seq>.json`` exists is skipped (the JSON is written last,
atomically), so a rerun, or Dask retrying the task of a worker that died, continues where it
stopped. The analysis settings are fixed (budgets, ``seed``, no deadlines, ``eval_workers``),
so the results are the same whichever executor ran them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("rewardscope.batch")

FAILURES = "failures.json"
STORE = "store"
IMAGE_EXTS = (".npy", ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".gif",
              ".dm3", ".dm4", ".emd")
H5_EXTS = (".h5", ".hdf5")
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class BatchInputError(ValueError):
    """An input path is missing or is none of the kinds ``batch`` reads."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+",
                   help="session folders or store roots, .rsrec logs, .h5 exports, image folders "
                        "or images")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--cluster", default="",
                   help="local:N (a LocalCluster of N worker processes) or a scheduler address "
                        "tcp://host:8786 (default: this process)")
    p.add_argument("--lattice-px", type=float, default=None,
                   help="lattice spacing hint in px when the frames carry none (default: found "
                        "in each frame)")
    p.add_argument("--workflow", default="all",
                   help="atoms|domains|amorphous|all|latent, a comma-separated list, or "
                        "package.module:Class (default all)")
    p.add_argument("--budget", type=int, default=8, help="evaluations per workflow, warm frames")
    p.add_argument("--cold-budget", type=int, default=16,
                   help="evaluations per workflow, a session's first frame")
    p.add_argument("--eval-workers", type=int, default=1,
                   help="evaluation threads per session (the same for every executor)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--motif", default=None, help="as for analyze")
    p.add_argument("--contrast", choices=("auto", "bright", "dark"), default=None)
    p.add_argument("--no-export", action="store_true",
                   help="write no DIR/store session store and no HDF5 exports")
    p.add_argument("--no-progress", action="store_true")


# ----------------------------------------------------------------------------- inputs

@dataclass(frozen=True)
class Source:
    """One unit of work: a session's frames in one input (``kind``: store, rsrec, h5, images).

    ``session`` is the output name; ``rsrec`` sources name it per frame (``session`` None).
    ``files`` lists an image source's files in order.
    """

    kind: str
    path: str
    session: str | None
    files: tuple[str, ...] = ()


def find_sources(inputs: list[str]) -> list[Source]:
    """The sessions in ``inputs``, in the order given; duplicate session names get ``-2``, ...

    Raises
    ------
    BatchInputError
        Naming the input that does not exist or cannot be read as any kind.
    """
    from rewardscope.storage import sessions

    found: list[Source] = []
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            raise BatchInputError(f"inputs: {raw} does not exist")
        if p.is_dir():
            if sessions.read_session_info(p) is not None and (p / sessions.FRAMES_LOG).exists():
                found.append(Source("store", str(p), sessions.read_session_info(p)[0]))
                continue
            stored = sessions.list_sessions(p)
            if stored:
                found += [Source("store", str(d), name) for name, d in stored]
                continue
            files = sorted(str(f) for f in p.iterdir()
                           if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
            if not files:
                raise BatchInputError(f"inputs: {raw} holds no session, store or image")
            found.append(Source("images", str(p), p.resolve().name, tuple(files)))
        elif p.suffix.lower() == ".rsrec":
            found.append(Source("rsrec", str(p), None))
        elif p.suffix.lower() in H5_EXTS:
            import h5py

            with h5py.File(p, "r") as h5:
                name = str(h5.attrs.get("session", p.stem))
            found.append(Source("h5", str(p), name))
        elif p.suffix.lower() in IMAGE_EXTS:
            found.append(Source("images", str(p), p.stem, (str(p),)))
        else:
            raise BatchInputError(f"inputs: {raw} is not a session, .rsrec, .h5 or image")
    seen: dict[str, int] = {}
    out = []
    for s in found:
        if s.session is not None:
            k = seen[s.session] = seen.get(s.session, 0) + 1
            if k > 1:
                s = Source(s.kind, s.path, f"{s.session}-{k}", s.files)
        out.append(s)
    return out


def count_frames(src: Source) -> int:
    """Frames in a source without reading pixels (record headers, dataset shapes): for the
    progress bar only."""
    if src.kind == "images":
        return len(src.files)
    if src.kind == "h5":
        import h5py

        with h5py.File(src.path, "r") as h5:
            return int(h5["seq"].shape[0]) if "seq" in h5 else 0
    from rewardscope.storage import recordlog, sessions

    path = Path(src.path)
    path = path / sessions.FRAMES_LOG if path.is_dir() else path
    n = 0
    try:
        with open(path, "rb") as f:
            f.seek(recordlog.FILE_HEADER_SIZE)
            while True:
                head = f.read(recordlog.RECORD_HEADER_SIZE)
                if len(head) < recordlog.RECORD_HEADER_SIZE:
                    return n
                body, _t, parts, _crc = recordlog.RECORD_HEADER.unpack(head)
                n += parts >= 3  # frame messages have pixels; start/end markers do not
                f.seek(body, os.SEEK_CUR)
    except (OSError, struct.error):
        return n


@dataclass
class Item:
    """One frame read from a source, or the reason it could not be read."""

    session: str
    seq: int
    label: str  # where it came from, for result.json's "image" and failure reports
    parts: list[bytes] | None = None  # the frame message (protocol.encode_frame)
    error: str | None = None


def _frame_parts(pixels: Any, session: str, seq: int, **header: Any) -> list[bytes]:
    from rewardscope import protocol
    from rewardscope.storage.stills import to_wire_array

    return protocol.encode_frame(to_wire_array(pixels), session=session, seq=seq, **header)


def iter_items(src: Source, lattice_px: float | None = None) -> Iterator[Item]:
    """The frames of ``src`` one at a time, from disk (nothing but the current frame held)."""
    if src.kind == "images":
        yield from _image_items(src, lattice_px)
    elif src.kind == "h5":
        yield from _h5_items(src, lattice_px)
    else:
        yield from _record_items(src, lattice_px)


def _image_items(src: Source, lattice_px: float | None) -> Iterator[Item]:
    from rewardscope.storage.stills import iter_image_frames

    seq = 0
    for file in src.files:
        name = Path(file).name
        frames = iter_image_frames(file)  # a stack is read frame by frame (npy: memory-mapped)
        while True:
            try:
                arr, meta = next(frames)
            except StopIteration:
                break
            except Exception as exc:  # an unreadable file costs its frame, not the batch
                item = Item(src.session, seq, name, error=f"{type(exc).__name__}: {exc}")
            else:
                label = f"{name}#{meta['frame_index']}"
                try:
                    parts = _frame_parts(arr, src.session, seq, t=float(seq),
                                         pixel_size_m=meta.get("pixel_size_m"),
                                         lattice_px=lattice_px,
                                         meta={"source": name,
                                               "frame_index": meta["frame_index"]})
                    item = Item(src.session, seq, label, parts)
                except Exception as exc:
                    item = Item(src.session, seq, label, error=f"{type(exc).__name__}: {exc}")
            seq += 1
            yield item
            if item.parts is None and item.label == name:
                break  # the file itself failed: go on with the next one


def _h5_items(src: Source, lattice_px: float | None) -> Iterator[Item]:
    import h5py

    with h5py.File(src.path, "r") as h5:
        seqs = h5["seq"][()] if "seq" in h5 else []
        headers = h5["frame_headers"] if "frame_headers" in h5 else None
        frames = h5["frames"]
        for i, seq in enumerate(seqs):
            label = f"{Path(src.path).name}#{i}"
            try:
                hdr = json.loads(headers[i]) if headers is not None else {}
                pixels = (frames[i] if isinstance(frames, h5py.Dataset)
                          else frames[f"{i:06d}"][()])
                parts = _frame_parts(
                    pixels, src.session, int(seq), t=float(hdr.get("t", i)),
                    pixel_size_m=hdr.get("pixel_size_m"),
                    origin_m=tuple(hdr["origin_m"]) if hdr.get("origin_m") else None,
                    lattice_px=hdr.get("lattice_px", lattice_px), meta=hdr.get("meta") or {})
                yield Item(src.session, int(seq), label, parts)
            except Exception as exc:
                yield Item(src.session, int(seq), label, error=f"{type(exc).__name__}: {exc}")


def _record_items(src: Source, lattice_px: float | None) -> Iterator[Item]:
    from rewardscope.storage import sessions

    path = Path(src.path)
    log_path = path / sessions.FRAMES_LOG if src.kind == "store" else path
    stats = sessions.LogStats()
    for f in sessions.iter_frames(log_path, stats):
        h = f.header
        session = src.session or h.session
        parts = _frame_parts(f.pixels, session, h.seq, t=h.t, pixel_size_m=h.pixel_size_m,
                             origin_m=h.origin_m, lattice_px=h.lattice_px or lattice_px,
                             meta=h.meta)
        yield Item(session, h.seq, f"{path.name}#{f.index}", parts)
    if stats.skipped or stats.tail:
        yield Item(src.session or path.stem, -1, log_path.name,
                   error=f"{stats.skipped} undecodable frame records skipped"
                         + (f", damaged tail ({stats.tail})" if stats.tail else ""))


# ----------------------------------------------------------------------------- one session

def output_name(session: str) -> str:
    """The folder of ``session`` under DIR: the name itself when it is a safe file name,
    else the session store's sanitised name (prefix + hash)."""
    from rewardscope.storage.sessions import session_dirname

    return session if _SAFE.match(session) and session not in (".", "..") \
        else session_dirname(session)


def batch_config(settings: dict[str, Any]):
    """The analysis settings of a batch: no deadlines (budgets end each search)."""
    from rewardscope import config

    return config.load(None, {**settings, "deadline_s": config.NO_DEADLINE_S,
                              "cold_deadline_s": config.NO_DEADLINE_S})


ENGINE_STATE = ".engine-state.json"
"""Per output session folder: the engine's state after the last frame written, and that frame's
position in the session (how a resumed or retried task continues exactly where it stopped)."""


@dataclass
class _Session:
    """A session's engine inside one task and how far its frames have been fed to it."""

    folder: Path
    engine: Any
    pos: int = -1  # the engine has seen every readable frame up to this position
    count: int = 0  # positions handed out in this pass
    stems: set[str] = field(default_factory=set)
    in_store: set[int] = field(default_factory=set)
    written: set[int] = field(default_factory=set)  # positions this task wrote


def _load_state(folder: Path) -> tuple[int, dict] | None:
    try:
        doc = json.loads((folder / ENGINE_STATE).read_text())
        return int(doc["pos"]), doc["state"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save_state(folder: Path, pos: int, state: dict) -> None:
    tmp = folder / f"{ENGINE_STATE}.partial"
    tmp.write_text(json.dumps({"pos": pos, "state": state}, default=_plain_default))
    os.replace(tmp, folder / ENGINE_STATE)


def _plain_default(v: Any) -> Any:
    from rewardscope.plaindata import plain

    out = plain(v)
    if out is v:
        raise TypeError(type(v).__name__)
    return out


def run_source(src: Source, out: str, settings: dict[str, Any], *, export: bool = True,
               on_frame: Callable[[], None] | None = None) -> dict[str, Any]:
    """Analyse one source's frames in order with one warm engine per session; the task that
    runs on a worker (or in this process).

    Exact on resume: after each frame the engine's state is saved (``.engine-state.json``);
    a rerun loads it, and when frames are missing behind it, or done frames lie between it
    and a missing one, the frames before the missing one are fed to the engine again (not
    rewritten) so every frame is analysed by an engine that saw exactly the frames before it.

    Parameters
    ----------
    src : Source
        What to read.
    out : str
        Output folder (``DIR``).
    settings : dict
        Configuration keys (workflow, budgets, seed, ...): :func:`batch_config`.
    export : bool
        Also write the session store under ``DIR/store`` and ``DIR/<session>.h5``.
    on_frame : callable, optional
        Called after each frame written (a progress tick).

    Returns
    -------
    dict
        ``sessions`` (names), ``done`` (frames analysed now), ``skipped`` (already written),
        ``failed`` (list of ``{session, seq, source, error}``).
    """
    from rewardscope.live.cluster import warmup_once

    warmup_once()
    cfg = batch_config(settings)
    root = Path(out)
    store = None
    if export:
        from rewardscope.storage.sessions import SessionStore

        store = SessionStore(root / STORE)
    report: dict[str, Any] = {"sessions": [], "done": 0, "skipped": 0, "failed": []}
    sessions: dict[str, _Session] = {}
    try:
        replay: dict[str, int] = {}  # session -> feed done frames up to this position again
        while True:
            restart = _one_pass(src, root, cfg, settings, store, sessions, replay, report,
                                on_frame)
            if not restart:
                break
    finally:
        if store is not None:
            store.close()
    if export and (report["done"] or not all(
            (root / f"{output_name(s)}.h5").exists() for s in report["sessions"])):
        _export(root, report)
    return report


def _one_pass(src: Source, root: Path, cfg: Any, settings: dict[str, Any], store: Any,
              sessions: dict[str, _Session], replay: dict[str, int], report: dict[str, Any],
              on_frame: Callable[[], None] | None) -> bool:
    """One pass over the source; True when the engine of a session must be fed frames it has
    passed (then the caller runs another pass). ``report["skipped"]`` is this pass's count."""
    from rewardscope import protocol
    from rewardscope.cli.analyze import write_result
    from rewardscope.engine import make_engine
    from rewardscope.live.publish import result_message

    for s in sessions.values():
        s.count, s.stems = 0, set()
    report["skipped"] = 0
    failed: dict[tuple[str, int], dict] = report.setdefault("_failed", {})
    for item in iter_items(src, settings.get("lattice_px")):
        sess = sessions.get(item.session)
        if sess is None:
            folder = root / output_name(item.session)
            folder.mkdir(parents=True, exist_ok=True)
            sess = sessions[item.session] = _Session(folder, make_engine(item.session, cfg))
            report["sessions"].append(item.session)
            sess.in_store = _stored_seqs(root, item.session) if store is not None else set()
            saved = _load_state(folder)
            if saved is not None:
                sess.engine.load_state_dict(saved[1])
                sess.pos = saved[0]
        i, sess.count = sess.count, sess.count + 1
        stem = str(item.seq) if str(item.seq) not in sess.stems else f"{item.seq}-{i}"
        sess.stems.add(stem)
        if item.error is not None:
            failed[(item.session, i)] = {"session": item.session, "seq": item.seq,
                                         "source": item.label, "error": item.error}
            sess.pos = max(sess.pos, i)
            continue
        done = (sess.folder / f"{stem}.json").exists()
        if done and i not in sess.written:
            report["skipped"] += 1
        if i <= sess.pos:
            if done or (item.session, i) in failed:
                continue  # the engine has seen it (this pass or an earlier run)
            # missing behind the saved state: start the session's engine over
            sess.engine, sess.pos = make_engine(item.session, cfg), -1
            replay[item.session] = i - 1
            return True
        if done and i > replay.get(item.session, -1):
            continue  # written, and no missing frame after it needs the engine warmed on it
        if not done and sess.pos != i - 1:  # the engine is not at the frame before this one
            replay[item.session] = i - 1
            return True
        t0 = time.perf_counter()
        try:
            frame = protocol.decode_instrument(item.parts)
            analysis = sess.engine.process(frame, cfg)
            elapsed = time.perf_counter() - t0
            sess.pos = i
            if done:  # a replayed frame: the engine needed it, the disk has it
                continue
            if store is not None and item.seq not in sess.in_store:
                store.frame_message(item.session, item.parts)
                store.result_message(item.session, result_message(
                    frame, analysis, time.monotonic() - elapsed))
            write_result(sess.folder, analysis, elapsed, image=item.label,
                         lattice_px=settings.get("lattice_px"),
                         workflow=str(settings.get("workflow", "all")),
                         name=f"{stem}.json", prefix=f"{stem}.")
            _save_state(sess.folder, i, sess.engine.state_dict())
        except Exception as exc:  # a failing frame is reported, never fatal
            sess.pos = i
            failed[(item.session, i)] = {"session": item.session, "seq": item.seq,
                                         "source": item.label,
                                         "error": f"{type(exc).__name__}: {exc}"}
            continue
        sess.written.add(i)
        report["done"] += 1
        if on_frame is not None:
            on_frame()
    report["failed"] = list(report.pop("_failed").values())
    return False


def _stored_seqs(root: Path, session: str) -> set[int]:
    """Seqs the batch store already holds results for (a resumed run does not repeat them)."""
    from rewardscope.storage.sessions import RESULTS_LOG, iter_results, session_path

    path = session_path(root / STORE, session) / RESULTS_LOG
    return {r.result.seq for r in iter_results(path)} if path.exists() else set()


def _export(root: Path, report: dict[str, Any]) -> None:
    from rewardscope.storage.hdf5 import export_session
    from rewardscope.storage.sessions import session_path

    for s in report["sessions"]:
        src = session_path(root / STORE, s)
        if src.is_dir():
            try:
                export_session(src, root / f"{output_name(s)}.h5", overwrite=True)
            except Exception as exc:
                report["failed"].append({"session": s, "seq": None, "source": STORE,
                                         "error": f"export: {type(exc).__name__}: {exc}"})


# ----------------------------------------------------------------------------- the batch

@dataclass
class BatchReport:
    """What a batch did: frames analysed now, skipped (already written), failures."""

    sessions: list[str] = field(default_factory=list)
    done: int = 0
    skipped: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, part: dict[str, Any]) -> None:
        self.sessions += part["sessions"]
        self.done += part["done"]
        self.skipped += part["skipped"]
        self.failed += part["failed"]


def _written(root: Path) -> int:
    """Frames written under ``root`` so far (result JSONs): the progress of remote tasks."""
    n = 0
    with contextlib.suppress(OSError):
        for d in os.scandir(root):
            if d.is_dir() and d.name != STORE:
                with contextlib.suppress(OSError):
                    n += sum(e.name.endswith(".json") and not e.name.startswith(".")
                             for e in os.scandir(d.path))
    return n


def run_batch(inputs: list[str], out: str | os.PathLike[str], settings: dict[str, Any], *,
              cluster: str | None = None, client: Any = None, export: bool = True,
              progress: bool = False, retries: int = 3) -> BatchReport:
    """Reprocess ``inputs`` into ``out`` (layout in the module docstring).

    Parameters
    ----------
    inputs : list of str
        Paths (see :func:`find_sources`).
    out : path
        Output folder, created if missing.
    settings : dict
        Configuration keys for the engine (``workflow``, ``budget``, ``cold_budget``, ``seed``,
        ``eval_workers``, ``lattice_px``, ...).
    cluster : str, optional
        ``local:N`` or a scheduler address; None or "" with no ``client``: this process.
    client : distributed.Client, optional
        An existing client to run on (``cluster`` is then ignored).
    export : bool
        Write ``DIR/store`` and one ``.h5`` per session.
    progress : bool
        A tqdm bar of frames on stderr.
    retries : int
        Dask retries of a session task that raised; a task whose worker died is rescheduled
        by Dask itself. Either way the retry skips the frames already written.

    Returns
    -------
    BatchReport
        ``failures.json`` in ``out`` holds ``failed`` too.
    """
    from tqdm import tqdm

    from rewardscope.live.cluster import Cluster

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    batch_config(settings)  # a bad setting fails here, naming the key, before any work
    sources = find_sources(list(inputs))
    total = sum(count_frames(s) for s in sources)
    report = BatchReport()
    t0 = time.perf_counter()
    bar = tqdm(total=total, initial=min(total, _written(root)), unit="frame",
               disable=not progress, file=sys.stderr, desc="batch")
    try:
        if client is None and not cluster:
            for src in sources:
                report.add(run_source(src, str(root), settings, export=export,
                                      on_frame=lambda: bar.update(1)))
        else:
            owned = None if client is not None else Cluster(cluster).start()
            try:
                report_parts = _run_dask(client or owned.client, sources, root, settings,
                                         export, retries, bar)
            finally:
                if owned is not None:
                    owned.close()
            for part in report_parts:
                report.add(part)
    finally:
        bar.close()
    report.seconds = time.perf_counter() - t0
    (root / FAILURES).write_text(json.dumps(report.failed, indent=1))
    return report


def _run_dask(client: Any, sources: list[Source], root: Path, settings: dict[str, Any],
              export: bool, retries: int, bar: Any) -> list[dict[str, Any]]:
    futures = {client.submit(run_source, src, str(root), settings, export=export,
                             retries=retries, pure=False, key=f"batch-{i}-{os.getpid()}-"
                             f"{time.time_ns()}"): src for i, src in enumerate(sources)}
    finished = threading.Event()  # set as each session's task ends
    for fut in futures:
        fut.add_done_callback(lambda _fut: finished.set())
    parts = []
    pending = set(futures)
    while pending:
        finished.wait(0.2)  # back as soon as a session ends; else in 0.2 s, to move the bar
        finished.clear()
        done = {f for f in pending if f.done()}
        pending -= done
        bar.n = min(bar.total, _written(root))
        bar.refresh()
        for fut in done:
            try:
                parts.append(fut.result())
            except Exception as exc:  # a session that kept failing (or killing workers)
                src = futures[fut]
                parts.append({"sessions": [], "done": 0, "skipped": 0, "failed": [
                    {"session": src.session, "seq": None, "source": src.path,
                     "error": f"{type(exc).__name__}: {exc}"}]})
    return parts


def run(args: argparse.Namespace) -> int:
    from rewardscope import config, logs

    logs.setup("WARNING", "text")
    if args.cluster:
        import distributed  # noqa: F401  (configures its loggers on import; quieten them after)

        for name in ("distributed", "dask"):  # Dask's INFO lines are not the user's business
            logging.getLogger(name).setLevel(logging.WARNING)
    settings = {"workflow": args.workflow, "budget": args.budget,
                "cold_budget": args.cold_budget, "seed": args.seed,
                "eval_workers": args.eval_workers, "lattice_px": args.lattice_px}
    if args.motif is not None:
        settings["motif"] = args.motif
    if args.contrast is not None:
        settings["contrast"] = args.contrast
    try:
        report = run_batch(args.inputs, args.out, settings, cluster=args.cluster or None,
                           export=not args.no_export, progress=not args.no_progress)
    except (config.ConfigError, BatchInputError) as exc:
        print(f"rewardscope batch: {exc}", file=sys.stderr)
        return 2
    for f in report.failed:
        print(f"rewardscope batch: failed {f['session']} seq {f['seq']} ({f['source']}): "
              f"{f['error']}", file=sys.stderr)
    rate = report.done / report.seconds if report.seconds > 0 else math.nan
    print(f"{report.done} frames analysed, {report.skipped} already done, "
          f"{len(report.failed)} failed, {len(set(report.sessions))} sessions in "
          f"{report.seconds:.1f} s ({rate:.2f} frames/s) -> {args.out}/")
    return 1 if report.failed else 0
