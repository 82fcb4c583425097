"""Latent analysis: encode throughput and latency (CPU, and CUDA when torch sees a GPU) against
pyroved's own encode loop, and the live per-frame latency with the slow loop training.

**Encode.** An rVAE as the service builds it (``LatentModel``: rotation invariance, 2 content
latents, one hidden layer of 64) on 32 x 32 patches (untrained weights: the cost does not
depend on them). For each batch size N in 256..65536 (and 2000, a typical frame) the fast path
(:meth:`LatentModel.posterior`: one forward per call, inputs from host numpy, outputs back
to host numpy) is timed per call (median of repeats): per-frame encode latency in ms and
throughput in patches/s. The baseline, measured in the same run on the same device and
patches: pyroved's ``iVAE.encode(x, batch_size=100)`` (a DataLoader over batches of 100, a
host copy per batch). On CUDA three variants of the fast path are timed: ``fp32``
(:meth:`posterior` as the service runs it), ``fp16-in`` (patches sent as float16, half the
host-to-device bytes, computed in float32) and ``autocast`` (float16 transfer and
``torch.autocast`` float16 compute); each reports its relative error against the CPU
encodings of the same patches (Frobenius norm of the difference over that of the CPU means,
and the same for the scales). Channels-last does not apply: pyroved's iVAE encoder is fully
connected.

**Live.** 384² simulated frames through ``SessionEngine`` with ``workflow = ["atoms",
"domains", "latent"]`` and a trained model in use; warm per-frame latency (median, p90, max)
with the trainer off, then with :class:`rewardscope.live.trainer.LatentTrainer` (its worker
process) training during the whole measurement, in the same run.

    python -m benchmarks latent [-- --quick] [--no-live] [--out DIR]

:func:`run` returns every number as a dict (``make bench``'s suite calls it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

PATCH = 32
SIZES = (256, 1024, 2000, 4096, 16384, 65536)
QUICK_SIZES = (256, 2000, 16384, 65536)
LATTICE = 12.0


def _model(device: str) -> Any:
    from rewardscope.science.vae import LatentModel

    return LatentModel(PATCH, 2, ("r",), (64,), device=device, seed=0)


def _median_s(fn: Any, repeats: int, sync: Any = None) -> float:
    fn()  # warm-up (allocations, kernels, cuBLAS handles)
    if sync is not None:
        sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) /
                 max(np.linalg.norm(np.asarray(b, np.float64)), 1e-30))


def _pyroved_encode(model: Any, x: np.ndarray) -> np.ndarray:
    """pyroved's own loop: iVAE.encode with batch_size=100 (host copy per batch)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)  # the fast path's setting on CPU: same threads for both
    try:
        loc, _ = model.vae_.encode(torch.from_numpy(x), batch_size=100)
    finally:
        torch.set_num_threads(old)
    return loc.numpy()


def _variant(model: Any, x: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """CUDA variants of the fast path: float16 transfer, optionally float16 compute."""
    import torch

    with torch.inference_mode():
        xt = torch.from_numpy(x.astype(np.float16)).to(model.device_, non_blocking=False)
        if kind == "autocast":
            with torch.autocast("cuda", dtype=torch.float16):
                mu, sd = model.vae_.encoder_z(xt)
        else:
            mu, sd = model.vae_.encoder_z(xt.float())
        return mu.float().cpu().numpy(), sd.float().cpu().numpy()


def encode(quick: bool = False) -> dict[str, Any]:
    """Encode throughput/latency per batch size on CPU (and CUDA), pyroved's loop as baseline.

    Parameters
    ----------
    quick : bool, optional
        Fewer sizes and repeats.

    Returns
    -------
    dict
        ``rows``: one per (device, variant, N) with ``latency_ms``, ``patches_per_s``,
        ``baseline_latency_ms`` (pyroved, same device and N; on CPU and for ``fp32``),
        ``speedup`` and, on CUDA, ``rel_err_loc`` / ``rel_err_scale`` against CPU;
        ``cuda`` (device name or None); ``torch_threads`` on CPU.
    """
    import torch

    sizes = QUICK_SIZES if quick else SIZES
    repeats = 3 if quick else 7
    rng = np.random.default_rng(0)
    x_all = rng.random((max(sizes), PATCH, PATCH), dtype=np.float32)
    cpu = _model("cpu")
    rows: list[dict[str, Any]] = []
    cpu_ref: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for n in sizes:
        x = x_all[:n]
        t = _median_s(lambda x=x: cpu.posterior(x), repeats)
        tb = _median_s(lambda x=x: _pyroved_encode(cpu, x), max(1, repeats // 2))
        cpu_ref[n] = cpu.posterior(x)
        rows.append({"device": "cpu", "variant": "fp32", "n": n, "latency_ms": 1e3 * t,
                     "patches_per_s": n / t, "baseline_latency_ms": 1e3 * tb,
                     "speedup": tb / t})
    out: dict[str, Any] = {"patch_px": PATCH, "architecture": cpu.config, "rows": rows,
                           "torch_threads": 1, "cuda": None}
    if not torch.cuda.is_available():
        return out
    out["cuda"] = torch.cuda.get_device_name(0)
    gpu = _model("cuda")
    gpu.load_state_dict(cpu.state_dict())
    sync = torch.cuda.synchronize
    for n in sizes:
        x = x_all[:n]
        ref_loc, ref_scale = cpu_ref[n]
        t = _median_s(lambda x=x: gpu.posterior(x), repeats, sync)
        tb = _median_s(lambda x=x: _pyroved_encode(gpu, x), max(1, repeats // 2), sync)
        loc, scale = gpu.posterior(x)
        rows.append({"device": "cuda", "variant": "fp32", "n": n, "latency_ms": 1e3 * t,
                     "patches_per_s": n / t, "baseline_latency_ms": 1e3 * tb,
                     "speedup": tb / t, "rel_err_loc": _rel(loc, ref_loc),
                     "rel_err_scale": _rel(scale, ref_scale)})
        for kind in ("fp16-in", "autocast"):
            tv = _median_s(lambda x=x, k=kind: _variant(gpu, x, k), repeats, sync)
            loc, scale = _variant(gpu, x, kind)
            rows.append({"device": "cuda", "variant": kind, "n": n, "latency_ms": 1e3 * tv,
                         "patches_per_s": n / tv, "baseline_latency_ms": 1e3 * tb,
                         "speedup": tb / tv, "rel_err_loc": _rel(loc, ref_loc),
                         "rel_err_scale": _rel(scale, ref_scale)})
    out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def live(quick: bool = False, frames: int | None = None) -> dict[str, Any]:
    """Warm per-frame latency of atoms + domains + latent on 384² frames, trainer off / on.

    Parameters
    ----------
    quick : bool, optional
        Fewer frames.
    frames : int, optional
        Warm frames timed per condition (default 6 quick, 16 full).

    Returns
    -------
    dict
        ``off`` and ``training``: ``median_s``, ``p90_s``, ``max_s``, ``n``; ``worker``: the
        trainer's status after the measurement (rounds, buffer, model).
    """
    from rewardscope import config
    from rewardscope.engine.session import SessionEngine
    from rewardscope.live.trainer import LatentTrainer, TrainSettings
    from rewardscope.science.atomfind import normalize_frame
    from rewardscope.science.vae import LatentModel, model_info, model_slot
    from rewardscope.simulators.perovskite import PerovskiteSimulator, SimConfig
    from rewardscope.workflows.latent import patches_at

    n = frames or (6 if quick else 16)
    sim = PerovskiteSimulator(SimConfig(shape=(384, 384), lattice_px=LATTICE, dose=200,
                                        seed=7))
    pix = [sim.frame(i).pixels for i in range(4)]
    f0 = sim.frame(0)
    slot = model_slot()  # the one the latent workflow reads
    slot.clear()
    half = 9  # window 6 at 12 px: the trainer's default candidate
    patches, inside = patches_at(normalize_frame(f0.pixels), f0.truth.atoms, half)
    model = LatentModel(2 * half + 1, 2, (), (64,))
    model.fit(patches[inside][:4096], epochs=5, batch_size=64)
    slot.swap(model, model_info(model, sublattice="all"))
    cfg = config.load(None, {"workflow": ["atoms", "domains", "latent"],
                             "lattice_px": LATTICE, "deadline_s": 60.0})
    eng = SessionEngine("bench", cfg)

    def timed(count: int) -> list[float]:
        out = []
        for i in range(count):
            t0 = time.perf_counter()
            a = eng.analyse(pix[i % len(pix)], LATTICE, cfg)
            out.append(time.perf_counter() - t0)
            assert a.scalars["model"]["id"] is not None, "latent did not use the model"
        return out

    timed(2)  # cold frame + first warm frame
    off = timed(n)
    settings = TrainSettings(round_s=600.0, candidates=50, epochs=500, hidden=64,
                             min_patches=256, max_train=4096)
    tr = LatentTrainer(slot, settings, interval_s=0.0)
    tr.start()
    try:
        deadline = time.monotonic() + 120
        while tr.buffer_["buffer_keypoints"] < settings.min_patches and \
                time.monotonic() < deadline:  # feed frames until the worker has material
            timed(1)
        time.sleep(2.0)  # the worker is inside its first candidate's training now
        on = timed(n)
        status = tr.status()
    finally:
        tr.stop()
        slot.clear()

    def summary(ts: list[float]) -> dict[str, float]:
        s = sorted(ts)
        return {"median_s": statistics.median(s), "p90_s": s[min(len(s) - 1,
                                                                  int(0.9 * len(s)))],
                "max_s": s[-1], "n": len(s)}

    return {"off": summary(off), "training": summary(on),
            "worker": {k: status[k] for k in ("training", "buffer_keypoints", "received",
                                              "dropped", "rounds")},
            "cpu_count": os.cpu_count()}


def run(quick: bool = False, *, live_latency: bool = True) -> dict[str, Any]:
    """Every latent benchmark number (the suite's entry point).

    Parameters
    ----------
    quick : bool, optional
        Fewer sizes, repeats and frames.
    live_latency : bool, optional
        Also measure the live per-frame latency (default True).

    Returns
    -------
    dict
        ``encode`` (:func:`encode`) and ``live`` (:func:`live`, when measured).
    """
    out: dict[str, Any] = {"encode": encode(quick)}
    if live_latency:
        out["live"] = live(quick)
    return out


def _print(res: dict[str, Any]) -> None:
    enc = res["encode"]
    print(f"encode, {enc['patch_px']}x{enc['patch_px']} patches, rVAE d2 hidden 64; "
          f"CUDA: {enc['cuda'] or 'none (skipped)'}")
    print(f"{'device':6} {'variant':9} {'N':>6} {'ms/frame':>9} {'patches/s':>11} "
          f"{'pyroved ms':>10} {'x faster':>8} {'rel err':>9}")
    for r in enc["rows"]:
        err = r.get("rel_err_loc")
        print(f"{r['device']:6} {r['variant']:9} {r['n']:6d} {r['latency_ms']:9.2f} "
              f"{r['patches_per_s']:11.3g} {r['baseline_latency_ms']:10.2f} "
              f"{r['speedup']:8.1f} {'' if err is None else f'{err:9.1e}'}")
    if "live" in res:
        lv = res["live"]
        print("live 384² atoms+domains+latent, warm s/frame (median / p90 / max):")
        for k in ("off", "training"):
            s = lv[k]
            print(f"  trainer {k:8}: {s['median_s']:.3f} / {s['p90_s']:.3f} / "
                  f"{s['max_s']:.3f} (n={s['n']})")
        print(f"  ratio training/off (median): "
              f"{lv['training']['median_s'] / lv['off']['median_s']:.2f}; worker {lv['worker']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks latent")
    p.add_argument("--quick", action="store_true", help="fewer sizes, repeats and frames")
    p.add_argument("--no-live", action="store_true", help="skip the live latency")
    p.add_argument("--out", default="", help="also write latent.json into this folder")
    a = p.parse_args(argv)
    res = run(a.quick, live_latency=not a.no_live)
    _print(res)
    if a.out:
        path = Path(a.out)
        path.mkdir(parents=True, exist_ok=True)
        (path / "latent.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
        print(f"wrote {path / 'latent.json'}")
    return 0 if all(math.isfinite(r["latency_ms"]) for r in res["encode"]["rows"]) else 1
