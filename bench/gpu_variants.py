"""Variants of dalidw's region graph, timed on one GPU: which DALI settings move its speed?

    python bench/gpu_variants.py --out variants.json      # on a machine with one NVIDIA GPU
    python bench/gpu_variants.py --device cpu              # the same mechanics on the CPU, small

Same data and loop as the speed rows of ``bench/gpu_check.py`` (batch 256, T=7, 40x45 boxes to 64x64x3,
4 regions resident on the device, DALI two batches ahead). Each variant is a copy of the region graph
with one thing changed: DALI's CPU threads, prefetch depth, the operators kept (slice alone; slice and
resize without the multiply; one 3-D resize per sample instead of one per frame), the CUDA stream
``feed_input`` is given (0: the default stream; -1: DALI's own; an idle CuPy stream of its own, as
the stacks were uploaded and synchronized before), or inputs built once before the timing. Rows
report samples/s, the host's median ms per batch to build the inputs and to hand them to
``feed_input``, host cores busy, and for full graphs the largest difference of the first batch from
the first row's. The "idle stream" rows have not run on a GPU yet.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_check  # noqa: E402 - the check's data and loader

#: (operators, DALI CPU threads, prefetch depth, what else differs); the first row is the reference.
VARIANTS = [
    ("full", 16, 2, ""), ("full", 2, 2, ""), ("full", 1, 2, ""), ("full", 4, 2, ""),
    ("no multiply", 2, 2, ""), ("slice only", 2, 2, ""), ("3-D resize", 2, 2, ""), ("full", 2, 3, ""),
    ("full", 2, 2, "stream 0"), ("full", 2, 2, "stream -1"), ("full", 2, 2, "inputs built before"),
    ("full", 2, 2, "idle stream"), ("full", 2, 3, "idle stream"), ("slice only", 2, 2, "idle stream"),
    ("full", 16, 2, "idle stream"),
]


def variant_graph(spec, kind: str, threads: int, depth: int):
    """The region graph of ``spec`` (uint8 FHWC stacks, no augmentation), built, with ``kind``'s operators."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=spec.batch_size, num_threads=threads, device_id=spec.device_id,
                  prefetch_queue_depth=depth, exec_dynamic=True)
    def graph():
        x = fn.external_source(name="frames", batch=True, layout="FHWC", dtype=types.UINT8, ndim=4,
                               device=spec.device, no_copy=True)
        box = fn.external_source(name="box", batch=True, dtype=types.INT32, ndim=1)
        y = fn.external_source(name="target", batch=True, dtype=types.FLOAT, ndim=0, device=spec.device)
        x = fn.slice(x, start=box[0:2], shape=box[2:4], axes=[1, 2])
        if kind == "slice only":
            return x, y
        if kind == "3-D resize":
            x = fn.reshape(x, layout="DHWC")
            x = fn.resize(x, size=[spec.frames, *spec.dim], dtype=types.FLOAT, interp_type=types.INTERP_LINEAR,
                          antialias=False)
            x = fn.reshape(x, layout="FHWC")
        else:
            x = fn.resize(x, size=list(spec.dim), dtype=types.FLOAT, interp_type=types.INTERP_LINEAR,
                          antialias=False)
        if kind != "no multiply":
            x = x * np.float32(spec.gain[0])
        return x, y

    pipe = graph()
    pipe.build()
    return pipe


def time_variant(feed, pipe, *, batches: int, depth: int, stream=None, prebuilt=None, sync=None):
    """(first batch's x as numpy, the row) for ``pipe`` fed ``feed``'s batches as a loader would
    (``gpu_check.run_ahead``)."""
    from dalidw.pipeline import feed_batch

    build, hand = [], []

    def give(step: int) -> None:
        t0 = time.perf_counter()
        inputs = prebuilt[step % len(prebuilt)] if prebuilt else feed.inputs(*gpu_check.after_warm_up(feed, step))
        t1 = time.perf_counter()
        feed_batch(pipe, inputs, cuda_stream=stream)
        build.append(t1 - t0)
        hand.append(time.perf_counter() - t1)

    first, samples, wall, cpu = gpu_check.run_ahead(pipe, give, batches=batches, depth=depth, sync=sync)
    first = np.array(first.as_cpu().as_array() if hasattr(first, "as_cpu") else first.as_array())
    return first, {"samples_per_s": round(samples / wall), "host_ms_inputs": round(1000 * float(np.median(build)), 3),
                   "host_ms_feed_input": round(1000 * float(np.median(hand)), 3),
                   "host_cores_busy": round(cpu / wall, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="gpu", choices=["gpu", "cpu"])
    parser.add_argument("--batches", type=int, default=None, help="batches timed per variant (300 GPU, 5 CPU)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    batches = args.batches or (300 if args.device == "gpu" else 5)
    rows: dict = {}
    with tempfile.TemporaryDirectory() as scratch:
        loader = gpu_check.speed_loader(args.device, scratch)(args.device)
        feed = gpu_check.device_feed(loader, loader, args.device)
        for index in range(len(feed)):  # every region decoded and resident
            feed.inputs(0, index)
        sync, idle = None, None  # no stream to give a CPU graph
        if args.device == "gpu":
            import cupy as cp

            sync, idle = cp.cuda.runtime.deviceSynchronize, cp.cuda.Stream(non_blocking=True)
        reference = None
        for k, (kind, threads, depth, other) in enumerate(VARIANTS):
            name = f"{k}: {kind}, {threads} threads, depth {depth}" + (f", {other}" if other else "")

            def row(k=k, kind=kind, threads=threads, depth=depth, other=other):
                nonlocal reference
                prebuilt = [feed.inputs(1, i) for i in range(len(feed))] if other == "inputs built before" else None
                stream = {"stream 0": 0, "stream -1": -1, "idle stream": idle}.get(other)
                pipe = variant_graph(feed.spec, kind, threads, depth)
                first, out = time_variant(feed, pipe, batches=batches, depth=depth, stream=stream, prebuilt=prebuilt,
                                          sync=sync)
                if k == 0:
                    reference = first
                if kind in ("full", "3-D resize") and reference is not None:  # the others compute something else
                    out["max_abs_diff_vs_row_0"] = float(np.max(np.abs(first - reference)))
                return out

            rows[name] = gpu_check.guarded(row)
            print(name, rows[name], file=sys.stderr, flush=True)
    summary = {"device": args.device, "batches_per_variant": batches, "variants": rows}
    if args.device == "gpu":
        import cupy as cp

        summary["card"] = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
