"""The GPU check: does dalidw's graph run on the GPU, agree with the CPU, and how fast is it?

    python bench/gpu_check.py [--out check.json]      # on a machine with one NVIDIA GPU (sized for minutes)
    python bench/gpu_check.py --self-test             # the same mechanics on the CPU (CI runs this)

Part (a) needs numpy, pandas, tifffile, DALI and (on a GPU) CuPy, not TensorFlow:
  - placement: every operator on the data path of the graph runs on the device asked for;
  - parity: for six setups (boxes of several sizes, of one size, "last-image", uint16 with mean/std,
    float32, one-hot class maps with augmentation), every batch of the graph that cuts crops from
    region stacks resident on the device equals the CPU loader's batch within 1e-5;
  - TIFF variants: which ones the device's decoder reads, and whether its pixels equal tifffile's;
  - speed: samples/s through the graph alone (T=7, 64x64x3, batch 256, 40x45 boxes, regions
    resident), host ms spent preparing each batch, device memory in use.
Part (b), only where TensorFlow sees a GPU: ``dataset()`` elements arrive on the GPU, one epoch of
``model.fit``, and a MirroredStrategy epoch.

With ``--self-test`` the device is the CPU: the "regions" graph (region stacks referenced, DALI
slices) is compared with the loader's "crops" graph (crops cut on the host). Without a GPU and
without ``--self-test`` it says so and exits 0, measuring nothing. The JSON summary is printed
and written to ``--out``; the exit status is 1 when a check fails.

On a machine without a package index, DALI's wheels can travel in parts; with every part in
.whlparts/:  mkdir -p .wheels && cat .whlparts/part-* | tar xf - -C .wheels &&
python3 -m pip install -q --no-index --no-deps --target .site .wheels/*.whl && export PYTHONPATH=$PWD/.site
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ATOL = 1e-5
#: Batches DALI runs ahead in the speed check.
PREFETCH = 2
YEARS = [2016, 2017, 2018]


# -- data written with tifffile ---------------------------------------------------------------------

def smooth(rng: np.random.Generator, shape: tuple[int, int, int], dtype: str, classes: int = 0) -> np.ndarray:
    """Locally smooth random pixels (so resizing has something to do), or class ids 0..classes-1."""
    h, w, c = shape
    coarse = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, c)).astype(np.float64)
    up = np.kron(coarse, np.ones((8, 8, 1)))[:h, :w] + rng.normal(0, 8, (h, w, c))
    up = up.clip(0, 255)
    if classes:
        return (up * classes // 256).astype(np.uint8)
    if dtype == "uint16":
        return (up * 257).astype(np.uint16)
    if dtype == "float32":
        return (up / 255).astype(np.float32)
    return up.astype(np.uint8)


def write_set(root: str, *, years: list[int], regions: int = 2, size: tuple[int, int] = (160, 176), bands: int = 3,
              dtype: str = "uint8", classes: int = 0, box: tuple[int, int] | None = None, tiles: int = 10,
              seed: int = 0) -> pd.DataFrame:
    """Region TIFFs under root/Images/{year}/{region}.tif and their tiles table (long format)."""
    import tifffile

    rng = np.random.default_rng(seed)
    rows = []
    for r in range(regions):
        for year in years:
            image = smooth(rng, (*size, bands), dtype, classes)
            os.makedirs(os.path.join(root, "Images", str(year)), exist_ok=True)
            data = image[..., 0] if bands == 1 else image
            options = {"photometric": "rgb" if bands == 3 else "minisblack", "planarconfig": "contig"}
            if bands == 1:
                options.pop("planarconfig")
            tifffile.imwrite(os.path.join(root, "Images", str(year), f"{r}.tif"), data, compression="zlib",
                             tile=(32, 32), **options)
        for k in range(tiles):
            h, w = box or (int(rng.integers(12, 60)), int(rng.integers(12, 60)))
            y0, x0 = int(rng.integers(0, size[0] - h)), int(rng.integers(0, size[1] - w))
            target = float(rng.random())
            for year in years:
                rows.append({"tile_id": r * 1000 + k, "region_id": r, "label_id": year, "target": target,
                             "region_coordinates": f"({x0}, {y0}, {x0 + w}, {y0 + h})"})
    return pd.DataFrame(rows)


SETUPS = {
    # name: (data options, loader options)
    "boxes of several sizes": ({}, {}),
    "boxes of one size": ({"box": (40, 45)}, {}),
    "last-image": ({"box": (40, 45)}, {"target": "last-image"}),
    "uint16 mean/std": ({"dtype": "uint16", "bands": 4}, {"bands": [3, 0, 1], "mean": [0.4, 0.5, 0.45],
                                                          "std": [0.2, 0.25, 0.3]}),
    "float32": ({"dtype": "float32", "bands": 2}, {"bands": [1, 0]}),
    "one-hot, augmented": ({"bands": 1, "classes": 5}, {"n_channels": 1, "num_classes": 5, "augment": True,
                                                        "dim": (24, 24)}),
}


# -- part (a) --------------------------------------------------------------------------------------

def compare(got: np.ndarray, expected: np.ndarray, atol: float = ATOL) -> dict:
    """{"ok", "max_abs_diff"} of two batches; shapes must match."""
    if got.shape != expected.shape:
        return {"ok": False, "why": f"shape {got.shape} != {expected.shape}"}
    diff = float(np.max(np.abs(got.astype(np.float64) - expected))) if got.size else 0.0
    return {"ok": bool(diff <= atol), "max_abs_diff": diff}


def device_feed(loader_device, loader_cpu, device: str):
    """The feed of the graph under test: on the GPU the loader's own ("regions", stacks on the
    device); on the CPU the CPU loader's feed switched to region references."""
    if device == "gpu":
        return loader_device.feed
    return loader_cpu.feed.replace(source="regions")


def check_parity(device: str, scratch: str) -> dict:
    from dalidw import SequenceDataLoader

    out = {}
    for k, (name, (data_options, options)) in enumerate(SETUPS.items()):
        root = os.path.join(scratch, f"setup{k}")
        table = write_set(root, years=YEARS, seed=k, **data_options)
        common = {"batch_size": 4, "dim": (20, 28), "random_seed": 5, **options}
        cpu = SequenceDataLoader(YEARS, table, os.path.join(root, "Images"), device="cpu", **common)
        dev = SequenceDataLoader(YEARS, table, os.path.join(root, "Images"), device=device, **common) \
            if device == "gpu" else None
        feed, worst, ok = device_feed(dev, cpu, device), 0.0, True
        for epoch in range(2):
            for index in range(len(cpu)):
                cpu.epoch = epoch  # the CPU loader's own batch of this epoch
                ex, ey = cpu[index]
                gx, gy = feed.run(feed.inputs(epoch, index))
                for result in (compare(gx, ex), compare(gy, ey)):
                    ok &= result["ok"]
                    worst = max(worst, result.get("max_abs_diff", np.inf))
        out[name] = {"ok": bool(ok), "max_abs_diff": worst, "batches": 2 * len(cpu)}
    return out


def check_placement(device: str) -> dict:
    from dalidw.pipeline import GraphSpec, build_pipeline, placement

    spec = GraphSpec(batch_size=4, dim=(8, 8), channels=3, frames=3, input_dtype=np.uint8, gain=(1 / 255,) * 3,
                     offset=(0.0,) * 3, interpolation="linear", num_classes=0, split_last=False, target_size=1,
                     device=device, device_id=0 if device == "gpu" else None, num_threads=2, source="regions",
                     turns=True, flips=True)
    nodes: list = []
    pipe = build_pipeline(spec, nodes=nodes)  # kept alive while its graph is walked
    ops = placement(nodes)
    del pipe
    return {"ok": all(d == device for _, d in ops), "operators": [f"{name}: {d}" for name, d in ops]}


VARIANTS = {
    "uint8 RGB, deflate, tiled": ("uint8", 3, {"compression": "zlib", "tile": (64, 64)}),
    "uint8 RGB, uncompressed, strips": ("uint8", 3, {}),
    "uint8 RGB, LZW": ("uint8", 3, {"compression": "lzw"}),
    "uint8 gray, deflate": ("uint8", 1, {"compression": "zlib"}),
    "uint8 4 bands, deflate": ("uint8", 4, {"compression": "zlib"}),
    "uint16 4 bands, deflate, tiled": ("uint16", 4, {"compression": "zlib", "tile": (64, 64)}),
    "float32 2 bands, deflate": ("float32", 2, {"compression": "zlib"}),
}


def check_variants(device: str, scratch: str) -> dict:
    """Which TIFF variants DALI's decoder reads on ``device`` (its "mixed" backend on the GPU),
    with the same pixels as tifffile."""
    import tifffile

    from dalidw.decode import RegionDecoder, read_with_tifffile

    out = {}
    rng = np.random.default_rng(1)
    for k, (name, (dtype, bands, options)) in enumerate(VARIANTS.items()):
        path = os.path.join(scratch, f"variant{k}.tif")
        image = smooth(rng, (128, 96, bands), dtype)
        layout = {"photometric": "rgb" if bands == 3 else "minisblack"}
        if bands > 1:
            layout["planarconfig"] = "contig"
        tifffile.imwrite(path, image[..., 0] if bands == 1 else image, **layout, **options)
        decoder = RegionDecoder(dtype=np.dtype(dtype), device=device, device_id=0 if device == "gpu" else None)
        try:
            decoded = decoder.decode([path], [(128, 96)])[0]
            same = bool(np.array_equal(decoded, read_with_tifffile(path)))
            how = "tifffile (slow path)" if path in decoder.slow_path else f"DALI {decoder.backend}"
            out[name] = {"ok": same, "decoded_by": how}
        except Exception as err:  # noqa: BLE001 - a report, not a loader
            out[name] = {"ok": False, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    return out


def time_graph(device: str, scratch: str, *, batches: int) -> dict:
    """Samples/s through the graph alone, regions resident, run as a loader would: DALI's
    prefetch queue holds the next batches while the host feeds the one after; and the host's
    share of each batch (the feed's inputs, and with DALI's ``feed_input`` of them)."""
    from dalidw import SequenceDataLoader
    from dalidw.pipeline import build_pipeline, feed_batch

    root = os.path.join(scratch, "speed")
    years = list(range(2016, 2023))
    size = (1024, 1024) if device == "gpu" else (256, 256)
    table = write_set(root, years=years, regions=4, size=size, box=(40, 45), tiles=512 if device == "gpu" else 96)
    batch = 256 if device == "gpu" else 32
    loader = SequenceDataLoader(years, table, os.path.join(root, "Images"), dim=(64, 64), batch_size=batch,
                                device=device, random_seed=1)
    feed = device_feed(loader, loader, device)
    for index in range(len(feed)):  # every region decoded, and resident on the device
        feed.inputs(0, index)
    pipe = build_pipeline(feed.spec, prefetch_queue_depth=PREFETCH)
    pipe.build()
    host, handed = [], []

    def hand(step: int) -> None:
        """Feed the inputs of the step-th batch after the warm-up epoch, timing the host's part."""
        t0 = time.perf_counter()
        inputs = feed.inputs(1 + step // len(feed), step % len(feed))
        t1 = time.perf_counter()
        feed_batch(pipe, inputs)
        host.append(t1 - t0)
        handed.append(time.perf_counter() - t0)

    for step in range(PREFETCH):  # DALI runs PREFETCH batches ahead, so it holds that many fed batches
        hand(step)
    pipe.run()  # untimed: the first run allocates the graph's buffers
    hand(PREFETCH)
    start, samples = time.perf_counter(), 0
    for step in range(1, batches + 1):
        x, _ = pipe.run()  # batch `step`; the graph already works on the next ones
        samples += len(x)
        hand(step + PREFETCH)
    if device == "gpu":
        import cupy as cp

        cp.cuda.runtime.deviceSynchronize()  # the last batch's kernels have finished
    wall = time.perf_counter() - start
    result = {"samples_per_s": samples / wall, "host_ms_per_batch": 1000 * float(np.median(host)),
              "host_ms_per_batch_with_feed_input": 1000 * float(np.median(handed)),
              "batch": batch, "frames": len(years), "output": [64, 64, 3], "box": [40, 45], "batches": batches,
              "prefetch_queue_depth": PREFETCH}
    if device == "gpu":
        import cupy as cp

        free, total = cp.cuda.runtime.memGetInfo()
        result["device_memory_used_mib"] = (total - free) / 2**20
        result["device_regions_resident"] = len(loader.feed.device_store.cache)
    return result


# -- part (b) --------------------------------------------------------------------------------------

def check_tensorflow(scratch: str) -> dict:
    from dalidw.devices import tensorflow_gpu_count

    if not tensorflow_gpu_count():
        return {"skipped": "TensorFlow is not installed or sees no GPU"}
    import keras
    import tensorflow as tf

    from dalidw import SequenceDataLoader

    root = os.path.join(scratch, "tf")
    table = write_set(root, years=YEARS, box=(40, 45), tiles=16)
    loader = SequenceDataLoader(YEARS, table, os.path.join(root, "Images"), dim=(32, 32), batch_size=8, device="gpu")
    x, _ = next(iter(loader.dataset()))
    out = {"element_device": x.device, "on_gpu": "GPU" in x.device}

    def model():
        net = keras.Sequential([keras.Input((len(YEARS), 32, 32, 3)), keras.layers.ConvLSTM2D(4, 3, padding="same"),
                                keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1)])
        net.compile("adam", "mse")
        return net

    with tf.device("/gpu:0"):
        history = model().fit(loader.dataset(), steps_per_epoch=len(loader), epochs=1, verbose=0)
    out["fit_loss"] = float(history.history["loss"][-1])
    strategy = tf.distribute.MirroredStrategy()
    with strategy.scope():
        net = model()
    history = net.fit(loader.distributed_dataset(strategy), steps_per_epoch=loader.steps_per_epoch(strategy),
                      epochs=1, verbose=0)
    out["mirrored_loss"] = float(history.history["loss"][-1])
    out["ok"] = out["on_gpu"] and np.isfinite(out["fit_loss"]) and np.isfinite(out["mirrored_loss"])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--self-test", action="store_true", help="run the checks on the CPU (no GPU needed)")
    parser.add_argument("--out", default=None, help="also write the JSON summary here")
    parser.add_argument("--batches", type=int, default=None, help="batches timed (default: 200 GPU, 10 CPU)")
    args = parser.parse_args()

    from dalidw.devices import gpu_count

    gpus = gpu_count()
    summary: dict = {"gpus_seen_by_dali": gpus}
    if args.self_test:
        device = "cpu"
    elif gpus:
        device = "gpu"
        import cupy as cp

        summary["card"] = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    else:
        summary["skipped"] = "no GPU that DALI sees: nothing measured (run with --self-test to check on the CPU)"
        return report(summary, args.out, ok=True)
    summary["device"] = device
    with tempfile.TemporaryDirectory() as scratch:
        summary["placement"] = check_placement(device)
        summary["parity"] = check_parity(device, scratch)
        summary["tiff_variants"] = check_variants(device, scratch)
        summary["graph_speed"] = time_graph(device, scratch, batches=args.batches or (200 if device == "gpu" else 10))
        summary["tensorflow"] = check_tensorflow(scratch) if device == "gpu" else {"skipped": "self-test on the CPU"}
    ok = summary["placement"]["ok"] and all(r["ok"] for r in summary["parity"].values()) \
        and summary["tensorflow"].get("ok", True)
    return report(summary, args.out, ok=ok)


def report(summary: dict, path: str | None, *, ok: bool) -> int:
    summary["ok"] = bool(ok)
    text = json.dumps(summary, indent=2, default=str)
    print(text)
    if path:
        with open(path, "w") as f:
            f.write(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
