"""The CUDA path, in one short run on a GPU machine: ``python bench/gpu.py`` (about 2-4 minutes on one GPU).

1. Checks: the embedded model loads on cuda in bf16 with float32 vectors; a short text fitted there reconstructs
   in the bf16 forward pass and in the float32 one the cache identity of a float32 model names; a corpus worker
   picks cuda:LOCAL_RANK.
2. Throughput: --texts texts of --tokens tokens (default 64 x 128) fitted in one batch for --steps steps: texts
   per second, steps per second, and the model FLOP utilisation (MFU) against the GPU's bf16 peak (--peak-tflops,
   or known from the device name).

Writes bench/results/gpu.json. Without a CUDA device it says so and exits 0, measuring nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.engine import corpus  # noqa: E402
from core.engine.cost import step_cost  # noqa: E402
from core.engine.fit import fit_texts, preset  # noqa: E402
from core.engine.models import load_model  # noqa: E402
from core.engine.reconstruct import reconstruct  # noqa: E402
from core.texts.textsets import load_sources  # noqa: E402

OUT = REPO / "bench" / "results" / "gpu.json"
# Dense bf16 tensor-core peaks (TFLOP/s) of common GPUs, from their vendors' data sheets.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}


def peak_tflops(name: str, given: float | None) -> float | None:
    if given:
        return given
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def check(condition: bool, what: str, failures: list[str]) -> None:
    print(f"  {'ok  ' if condition else 'FAIL'} {what}", flush=True)
    if not condition:
        failures.append(what)


def checks(failures: list[str]) -> dict:
    lm = load_model(device="cuda", dtype="bfloat16")
    check(lm.device.type == "cuda" and lm.dtype == torch.bfloat16, "the embedded model is on cuda in bf16", failures)
    text = "The cat sat on the mat."
    started = time.perf_counter()
    [result] = fit_texts(lm, [text], preset("fast", max_steps=600))
    seconds = time.perf_counter() - started
    check(result.e.dtype == torch.float32 and result.m.dtype == torch.float32, "fitted vectors are float32", failures)
    check(result.converged, f"a short text converges on cuda ({result.steps} steps, {seconds:.1f} s)", failures)
    bf16 = reconstruct(lm, result.e, result.m, lm.encode(text), "e+m*N")
    check(bf16.text == text, "it reconstructs in the bf16 forward pass", failures)
    fp32 = load_model(device="cuda", dtype="float32")
    f32 = reconstruct(fp32, result.e, result.m, fp32.encode(text), "e+m*N")
    print(f"  info float32 forward pass of the bf16-fitted vectors: accuracy {f32.metrics.accuracy:.3f}")
    worker = corpus.Worker(rank=1, world_size=2, local_rank=1, local_world_size=2)
    expected = f"cuda:{1 % torch.cuda.device_count()}"
    check(corpus.worker_device(worker) == expected, f"worker 1 of 2 runs on {expected}", failures)
    return {"steps": result.steps, "seconds": round(seconds, 2), "float32_accuracy": f32.metrics.accuracy}


def throughput(n_texts: int, n_tokens: int, steps: int, peak: float | None) -> dict:
    lm = load_model(device="cuda", dtype="bfloat16")
    words = " ".join(s.text for s in load_sources())
    ids = lm.encode(words * (1 + n_texts * n_tokens // max(len(lm.encode(words)), 1)))
    targets = [ids[i * 7:i * 7 + n_tokens] for i in range(n_texts)]  # overlapping windows: distinct texts
    texts = [lm.decode(t) for t in targets]
    config = preset("fast", max_steps=steps, threshold=1.0, restarts=1, redraw_after=0, redraw_plateau=0)
    fit_texts(lm, texts[:2], preset("fast", max_steps=3), token_ids=targets[:2])  # warm-up: kernels, allocator
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    results = fit_texts(lm, texts, config, token_ids=targets, batch_size=n_texts)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    row_steps = sum(r.steps for r in results)
    # counted from the architecture: forward, and backward to the inputs (the model is frozen)
    flops = step_cost(lm.model, 1, n_tokens + 1).flops * row_steps
    achieved = flops / seconds / 1e12
    report = {
        "texts": n_texts, "tokens": n_tokens, "steps": steps, "seconds": round(seconds, 2),
        "texts_per_second": round(n_texts / seconds, 3), "steps_per_second": round(max(r.steps for r in results) / seconds, 2),
        "row_steps_per_second": round(row_steps / seconds, 1), "achieved_tflops": round(achieved, 1),
        "peak_tflops": peak, "mfu": round(achieved / peak, 3) if peak else None,
        "converged": sum(r.converged for r in results),
        "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }
    print(f"  {n_texts} texts x {n_tokens} tokens, {steps} steps: {report['texts_per_second']} texts/s, "
          f"{report['steps_per_second']} steps/s, {achieved:.1f} TFLOP/s"
          + (f" = MFU {report['mfu']:.1%} of {peak:g}" if peak else ""), flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, if not known by name")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device here: nothing to measure (run this on the GPU machine)")
        return 0
    name = torch.cuda.get_device_name(0)
    print(f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    failures: list[str] = []
    report = {"device": name, "torch": torch.__version__, "created": time.time(), "checks": checks(failures)}
    report["throughput"] = throughput(args.texts, args.tokens, args.steps, peak_tflops(name, args.peak_tflops))
    report["failures"] = failures
    OUT.write_text(json.dumps(report, indent=1))
    print(f"written {OUT.relative_to(REPO)}; {len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
