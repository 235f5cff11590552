#!/usr/bin/env bash
# make gpu-check: prove the GPU path in one short run (issue 22). Installs nothing.
#
#   bash benchmarks/gpu_check.sh            (or: make gpu-check)
#
# Without a CUDA GPU it prints one line and exits 0. With one it runs, each stage under a time limit so that the
# whole check stays under 8 minutes on one H100 / H200:
#   1. pytest -m cuda tests/test_cuda.py       student, losses, AMP distill, resume, precompute, torchrun on CUDA
#   2. distillation throughput of the minkunet34 student on CUDA, per loss (benchmarks/bench_distill.py --child,
#      with configs/distill_gpu.yaml scaled down to a 24-sample town): samples/s and torch.cuda.max_memory_allocated
#   3. the losses on CUDA (benchmarks/bench_losses.py measure(), after one warm-up call each): time, peak extra
#      memory, and for the Gram form its GFLOP/s next to a torch.mm of the same shape
#   4. precompute images/s of the tiny open_clip ViT (tests/data/rdistill-tiny-vit.json) on CUDA
# It writes $GPU_CHECK_OUT/gpu_check.json (default runs/gpu_check/) and prints one table.
# Exit status: 0 all passed; 1 a CUDA test failed (or the tests did not finish); 2 the tests passed but a
# benchmark failed or ran out of time.
set -u
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=${GPU_CHECK_OUT:-runs/gpu_check}

if [ ! -x "$PY" ]; then
    echo "gpu-check: $PY not found; run 'make install' first (this check installs nothing)"
    exit 1
fi
CUDA=$("$PY" -c 'import torch; print(torch.cuda.is_available())' 2>/dev/null | tail -n 1)
if [ "$CUDA" = "False" ]; then
    echo "gpu-check: no CUDA GPU on this machine; nothing to check"
    exit 0
elif [ "$CUDA" != "True" ]; then
    echo "gpu-check: '$PY -c \"import torch\"' failed; see: $PY -c 'import torch'"
    exit 1
fi

rm -rf "$OUT"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 RDISTILL_CACHE="$OUT/cache"
START=$(date +%s)

echo "gpu-check: 1/4 pytest -m cuda tests/test_cuda.py (log: $OUT/tests.log)"
timeout 270 "$PY" -m pytest -q -m cuda -rfExX tests/test_cuda.py --junitxml "$OUT/tests.xml" \
    >"$OUT/tests.log" 2>&1
TESTS_RC=$?
tail -n 12 "$OUT/tests.log"

echo "gpu-check: 2-4/4 benchmarks on CUDA (log: $OUT/bench.log)"
"$PY" - "$OUT" "$TESTS_RC" "$START" <<'PYTHON' 2>"$OUT/bench.log"
"""The benchmark stages and the report of make gpu-check (see the header of benchmarks/gpu_check.sh)."""
import json
import os
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

import torch
import yaml

OUT, TESTS_RC, START = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
ROOT = Path.cwd()
BUDGET = 465.0  # seconds from the start of the check; each stage gets at most what is left of it
report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
          "stages": {}}
try:
    import spconv
    report["spconv"] = getattr(spconv, "__version__", "?")
except Exception as err:  # reported, the stages below then fail on their own
    report["spconv"] = f"import failed: {err}"


def left() -> float:
    return BUDGET - (time.time() - START)


def stage(name: str, need: float):
    """Run the decorated function as stage ``name`` if ``need`` seconds are left; record its result or error."""
    def run(fn):
        if left() < need:
            report["stages"][name] = {"status": "skipped", "reason": f"time budget: {left():.0f}s left, needs {need:.0f}s"}
            return fn
        began = time.time()
        try:
            report["stages"][name] = {"status": "ok", **fn()}
        except Exception as err:
            traceback.print_exc()
            report["stages"][name] = {"status": "failed", "error": f"{type(err).__name__}: {str(err)[-500:]}"}
        report["stages"][name]["seconds"] = round(time.time() - began, 1)
        return fn
    return run


# -- 1. the tests (run by the shell script), read from their JUnit XML ------------------------------------------------
tests = {"status": "ok" if TESTS_RC == 0 else "failed", "exit_status": TESTS_RC}
if TESTS_RC == 124:
    tests["reason"] = "timed out after 270s"
try:
    suite = ET.parse(OUT / "tests.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    cases = suite.findall("testcase")
    def outcome(case):
        for tag in ("failure", "error"):
            if case.find(tag) is not None:
                return "failed"
        skipped = case.find("skipped")
        if skipped is not None:
            return "xfailed" if skipped.get("type") == "pytest.xfail" else "skipped"
        return "passed"
    counts = {}
    for case in cases:
        counts[outcome(case)] = counts.get(outcome(case), 0) + 1
    tests["counts"] = counts
    tests["failed"] = [c.get("name") for c in cases if outcome(c) == "failed"]
    tests["xfailed"] = [c.get("name") for c in cases if outcome(c) == "xfailed"]
except (OSError, ET.ParseError, AttributeError) as err:
    tests["counts"] = {}
    tests["note"] = f"no JUnit XML ({err})"
report["stages"]["tests"] = tests

TOWN, FEATURES = OUT / "town", OUT / "features"


@stage("town", need=60)
def make_data():
    """A 24-sample town (18 train samples) and its sim-clip features, for the distillation and precompute stages."""
    from relational_distill.engine.precompute import PrecomputeConfig, precompute
    from relational_distill.sim.writer import SimConfig, make_town

    make_town(TOWN, SimConfig(scenes=4, samples_per_scene=6, seed=0), workers=min(8, os.cpu_count() or 1))
    precompute(PrecomputeConfig(dataroot=TOWN, out=FEATURES, summary_per_class=100, quiet=True))
    return {"samples": 24}


# -- 2. distillation throughput, minkunet34 -------------------------------------------------------------------------
EPOCHS, BATCH = 3, 4


@stage("distill_minkunet34", need=90)
def bench_distill():
    """configs/distill_gpu.yaml (minkunet34, block-wise L1 relational, 16384 pairs, SGD) with a batch of 4 for the
    small town (its lr scaled linearly from 0.5 at 128); one fresh process per loss (benchmarks/bench_distill.py
    --child), so each peak is that loss's own."""
    cfg = yaml.safe_load((ROOT / "configs" / "distill_gpu.yaml").read_text())
    cfg.update(batch_size=BATCH, lr=round(0.5 * BATCH / 128, 6), workers=min(4, os.cpu_count() or 1))
    config = OUT / "distill_gpu_check.yaml"
    config.write_text(yaml.safe_dump(cfg))
    rows = {}
    for loss in ("contrastive", "similarity", "relational"):
        run = OUT / f"distill-{loss}"
        cmd = [sys.executable, "benchmarks/bench_distill.py", "--child", "--loss", loss, "--config", str(config),
               "--device", "cuda", "--town", str(TOWN), "--features", str(FEATURES), "--out", str(run),
               "--epochs", str(EPOCHS)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(10.0, min(150.0, left())))
        if proc.returncode != 0:
            raise RuntimeError(f"{loss}: {proc.stderr.strip()[-400:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        steps = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
        steps = [r for r in steps if "loss" in r]
        later = [r for r in steps if r["epoch"] >= 1]  # after the first epoch (start-up, spconv's kernel tuning)
        steady = None
        if len(later) >= 2:
            steady = (len(later) - 1) * BATCH / (later[-1]["time"] - later[0]["time"])
        rows[loss] = {"samples_per_second": res["samples_per_second"], "steady_samples_per_second": steady,
                      "peak_mib": res["peak_bytes"] / 2 ** 20, "steps": len(steps),
                      "final_loss": steps[-1]["loss"] if steps else None}
    return {"config": {k: cfg[k] for k in ("preset", "batch_size", "num_pairs", "relational_p", "block_size",
                                           "optimizer", "lr", "voxel_size", "workers")},
            "epochs": EPOCHS, "losses": rows}


# -- 3. the losses --------------------------------------------------------------------------------------------------
LOSS_CASES = [("contrastive", 16384, 0), ("contrastive", 16384, 4096), ("contrastive", 65536, 4096),
              ("similarity", 1048576, 0),
              ("relational", 16384, 0), ("relational", 16384, 4096), ("relational", 65536, 4096),
              ("relational-squared", 65536, 0), ("relational-squared", 1048576, 0)]


@stage("losses", need=30)
def bench_losses():
    """benchmarks/bench_losses.py's measure() at D = 512, each case called twice in this process and the second
    call kept (the first pays CUDA's and cuBLAS's start-up)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_losses

    rows = []
    for loss, n, block in LOSS_CASES:
        if left() < 10:
            rows.append({"loss": loss, "n": n, "block": block or None, "skipped": "time budget"})
            continue
        bench_losses.measure(loss, n, 512, block or None, "cuda")  # warm-up
        res = bench_losses.measure(loss, n, 512, block or None, "cuda")
        rows.append({"loss": loss, "n": n, "block": block or None, "seconds": res["seconds"],
                     "peak_extra_mib": res["peak_bytes"] / 2 ** 20,
                     **({"gflops": res["gflops"], "mm_gflops": res["mm_gflops"]} if "gflops" in res else {})})
        torch.cuda.empty_cache()
    return {"dim": 512, "rows": rows}


# -- 4. precompute, tiny open_clip ----------------------------------------------------------------------------------
@stage("precompute_tiny_openclip", need=20)
def bench_precompute():
    """The tiny ViT (random weights, offline) through the precompute path on CUDA: OpenClipAdapter.features
    (image decoding and resizing on the CPU, MaskCLIP on the GPU, float16 back to the host), per batch of samples
    of 6 cameras, at 416x224; images/s after one warm-up batch."""
    import open_clip

    from relational_distill.data.nuscenes import load_index
    from relational_distill.teachers.factory import make_teacher

    open_clip.add_model_config(ROOT / "tests" / "data" / "rdistill-tiny-vit.json")
    index = load_index(TOWN, "v1.0-sim")
    teacher = make_teacher("openclip:rdistill-tiny-vit", index, "cuda", image_size=(416, 224))
    rows = {}
    for batch in (1, 4):
        samples = index.samples
        teacher.features(samples[:batch], (416, 224))  # warm-up
        torch.cuda.synchronize()
        began = time.perf_counter()
        images = 0
        for b in range(0, len(samples), batch):
            feats = teacher.features(samples[b:b + batch], (416, 224))  # numpy: already back on the host
            images += sum(len(f) for f in feats)
        rows[f"batch_{batch}"] = {"images_per_second": images / (time.perf_counter() - began), "images": images}
    return {"image_size": [416, 224], "rows": rows}


# -- the report -----------------------------------------------------------------------------------------------------
report["seconds"] = round(time.time() - START, 1)
(OUT / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")

def fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)

lines = ["| stage | case | result |", "|---|---|---|"]
t = report["stages"]["tests"]
lines.append(f"| tests | pytest -m cuda tests/test_cuda.py | {t['status']}: "
             + ", ".join(f"{v} {k}" for k, v in sorted(t.get("counts", {}).items()))
             + (f"; failed: {', '.join(t['failed'])}" if t.get("failed") else "") + " |")
for name in ("town", "distill_minkunet34", "losses", "precompute_tiny_openclip"):
    s = report["stages"].get(name, {"status": "missing"})
    if s["status"] != "ok":
        lines.append(f"| {name} | | {s['status']}: {s.get('reason') or s.get('error', '')} |")
        continue
    if name == "town":
        lines.append(f"| town | {s['samples']} samples + sim-clip features | ok ({s['seconds']}s) |")
    elif name == "distill_minkunet34":
        for loss, r in s["losses"].items():
            lines.append(f"| distill minkunet34 | {loss} | {fmt(r['samples_per_second'], '.2f')} samples/s "
                         f"(steady {fmt(r['steady_samples_per_second'], '.2f')}), peak "
                         f"{fmt(r['peak_mib'], '.0f')} MiB, {r['steps']} steps |")
    elif name == "losses":
        for r in s["rows"]:
            case = f"{r['loss']} N={r['n']} " + (f"block {r['block']}" if r["block"] else
                                                 ("Gram" if r["loss"] == "relational-squared" else "plain"))
            if "skipped" in r:
                lines.append(f"| losses D=512 | {case} | skipped: {r['skipped']} |")
                continue
            extra = (f", {r['gflops']:.0f} GFLOP/s (torch.mm same shape: {r['mm_gflops']:.0f})"
                     if "gflops" in r else "")
            lines.append(f"| losses D=512 | {case} | {r['seconds'] * 1e3:.1f} ms fwd+bwd, "
                         f"{r['peak_extra_mib']:.0f} MiB extra{extra} |")
    else:
        for batch, r in s["rows"].items():
            lines.append(f"| precompute tiny open_clip | {batch.replace('_', ' ')} x 6 cameras, 416x224 | "
                         f"{r['images_per_second']:.1f} images/s |")
print(f"gpu-check on {report['device']} (torch {report['torch']}, CUDA {report['cuda_runtime']}, spconv "
      f"{report['spconv']}), {report['seconds']}s; JSON: {OUT / 'gpu_check.json'}")
print("\n".join(lines))
bench_ok = all(report["stages"].get(n, {}).get("status") == "ok"
               for n in ("town", "distill_minkunet34", "losses", "precompute_tiny_openclip"))
sys.exit(0 if bench_ok else 3)
PYTHON
BENCH_RC=$?
if [ "$TESTS_RC" -ne 0 ]; then
    echo "gpu-check: FAILED: a CUDA test failed (pytest exit status $TESTS_RC); see $OUT/tests.log"
    exit 1
fi
if [ "$BENCH_RC" -ne 0 ]; then
    echo "gpu-check: the CUDA tests passed, but a benchmark failed or ran out of time; see $OUT/bench.log"
    exit 2
fi
echo "gpu-check: passed in $(( $(date +%s) - START ))s"
