#!/usr/bin/env bash
# The latent analysis's one short GPU check (a few minutes; GPU time is scarce):
#   1. CUDA correctness: encodings of a trained model on CUDA against CPU (relative error),
#      a tiny model trained on CUDA (finite loss), a CUDA checkpoint reloaded to identical
#      encodings, the fast loop's 2,000-patch frame timed on CUDA;
#   2. the encode benchmark (python -m benchmarks latent -- --quick --no-live): throughput
#      and per-frame latency, 256..65536 patches of 32x32, CPU and CUDA, pyroved's encode loop
#      as the baseline in the same run, fp32 / fp16-in / autocast with their relative errors.
# Results: $OUT (the device runner's folder) or benchmarks/results/: gpu_check.json,
# latent.json, gpu_check.log. Without CUDA the CUDA parts say "skipped" and the rest runs.
#   bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEST=${OUT:-benchmarks/results}
mkdir -p "$DEST"
export NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-$PWD/.venv/numba-cache}
export PYTHONPATH=${PYTHONPATH:-$PWD}
{
echo "== gpu_check $(date -u +%FT%TZ) $(hostname)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader || echo "nvidia-smi: none"
timeout 240 "$PY" - "$DEST/gpu_check.json" <<'PYEOF'
import json, sys, time
import numpy as np
import torch
from rewardscope.science.vae import LatentModel, load_checkpoint

out = {"cuda": torch.cuda.is_available(), "torch": torch.__version__, "checks": {}}
rng = np.random.default_rng(0)
yy, xx = np.mgrid[-16:16, -16:16]
blob = lambda dx, s: np.exp(-((xx - dx) ** 2 + yy ** 2) / (2 * s * s))
x = np.stack([blob(rng.normal(0, 3), rng.uniform(2, 6)) for _ in range(2048)]).astype(np.float32)
x += rng.normal(0, 0.02, x.shape).astype(np.float32)
cpu = LatentModel(32, 2, ("r",), (64,), device="cpu")
cpu.fit(x, epochs=3, batch_size=128)
ref_loc, ref_scale = cpu.posterior(x)
if not out["cuda"]:
    print("no CUDA device: CUDA checks skipped")
else:
    out["device"] = torch.cuda.get_device_name(0)
    gpu = LatentModel(32, 2, ("r",), (64,), device="cuda")
    gpu.load_state_dict(cpu.state_dict())
    loc, scale = gpu.posterior(x)
    rel = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b))
    out["checks"]["rel_err_loc"] = rel(loc, ref_loc)
    out["checks"]["rel_err_scale"] = rel(scale, ref_scale)
    t = LatentModel(32, 2, ("r",), (64,), device="cuda")
    h = t.fit(x, epochs=2, batch_size=256)
    out["checks"]["cuda_train_loss"] = h.loss
    path = t.save("/tmp/gpu_check_model.pt")
    again, _ = load_checkpoint(path, device="cuda")
    out["checks"]["checkpoint_identical"] = bool(np.array_equal(again.posterior(x)[0],
                                                                t.posterior(x)[0]))
    frame = x[:2000]
    gpu.posterior(frame); torch.cuda.synchronize()
    ts = []
    for _ in range(20):
        t0 = time.perf_counter(); gpu.posterior(frame); torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    out["checks"]["frame_2000_ms"] = 1e3 * float(np.median(ts))
    ok = (out["checks"]["rel_err_loc"] < 1e-3 and out["checks"]["rel_err_scale"] < 1e-3
          and all(np.isfinite(h.loss)) and out["checks"]["checkpoint_identical"])
    out["ok"] = bool(ok)
    print(json.dumps(out, indent=1))
json.dump(out, open(sys.argv[1], "w"), indent=1)
if out["cuda"] and not out["ok"]:
    sys.exit("CUDA correctness check FAILED")
PYEOF
timeout 420 "$PY" -m benchmarks latent -- --quick --no-live --out "$DEST"
} 2>&1 | tee "$DEST/gpu_check.log"
