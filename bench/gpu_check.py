"""The GPU check: does dalidw run on the GPU, agree with the CPU, how fast is it, and how much of a
training step does the loader cost?

    python bench/gpu_check.py [--out check.json]      # on a machine with one NVIDIA GPU (a few minutes)
    python bench/gpu_check.py --self-test             # the same mechanics on the CPU, small (CI runs this)

Part (a) needs numpy, pandas, tifffile, DALI and (on a GPU) CuPy, not TensorFlow:
  - placement: every operator on the data path of the graph runs on the device asked for;
  - parity: for six setups (boxes of several sizes, of one size, "last-image", uint16 with mean/std,
    float32, one-hot class maps with augmentation), every batch of the device loader, run ahead as
    training reads it (frames cut on the GPU into reused device buffers), and every batch of its
    numpy path, equals the CPU loader's batch within 1e-5 (times the batch's scale, max(1, max |x|));
  - TIFF variants: which ones dalidw's decoder reads with tifffile's pixels, and on a GPU whether
    DALI's GPU decoder alone does;
  - speed, every row in one run (T=7, 40x45 boxes resized to 64x64x3, regions resident): the loader's
    graph at batch 256 with DALI as many batches ahead as the loader's default (3 on a GPU, 2 on the
    CPU), and variants of it (outputs bound to a CUDA stream, the other depth, resize minibatches of
    32 and 256 frames, one DALI CPU thread in place of two, batch 1024); the graph fed crops cut on
    the host, as ``dataset()`` feeds DALI's TensorFlow plugin; on a GPU the CPU loader's graph; two
    peers without DALI on the same resident regions: array ops (CuPy on a GPU, NumPy on the CPU) and
    torchvision's roi_align where installed. Each row:
    samples/s, host cores busy (process CPU time over wall time), host ms per batch of each thread by
    name, device memory in use (all allocators);
  - large regions: regions of 4096x4096 pixels and 7 years (small on the CPU), a grid of tiles over
    each, through the same graph, with the bytes resident and the device memory in use (at the start
    and the end, and at the end with the pools' free blocks let go);
  - blocking sync: in a process of its own whose CUDA context blocks a host thread waiting for the
    GPU instead of spinning, the first graph row again, and with the one-kernel cut.
Part (b), only where TensorFlow sees a GPU: ``dataset()`` elements arrive on the GPU, one epoch of
``model.fit``, and a MirroredStrategy epoch.
Part (c), where Keras and JAX are installed (in a process of its own, Keras on JAX): one timed run
of ``model.fit`` of ``dalidw train``'s ConvLSTM at batch 256, T=7, 64x64x3 (small on the CPU), fed
(i) by the loader's PyDataset (JAX arrays on the loader's device) and (ii) by the same batches
already resident there; steps/s of each, the loader's overhead = step time (i) / step time (ii) - 1,
host cores busy, and the cost of the partial last batch's compilation; for the default model (16
filters) and a larger one (64 filters; on the CPU 2 and 4 filters, where JAX is slow).

Last, the frames cut by one CUDA kernel launch per batch (``dalidw.cut_kernel``, not yet the
default): a speed row after the peers, and three parity setups through it (on the CPU, its frame
table copied on the host against the host cut). ``--cupy-smoke`` checks it first, without DALI.

The JSON has every section and a "summary" block of the headline figures. It is printed and
written to ``--out`` (also after each section, so a crash or time-out keeps what was measured); a
section that raises is reported as such and the others still run; the exit status is 1 when a
check fails. Without a GPU and without ``--self-test`` it says so and exits 0, measuring nothing.

On a machine without a package index, DALI's and Keras's wheels can travel in parts; with every
part in .whlparts/:  mkdir -p .wheels && cat .whlparts/part-* | tar xf - -C .wheels &&
python3 -m pip install -q --no-index --no-deps --target .site .wheels/*.whl && export PYTHONPATH=$PWD/.site
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import numpy as np
import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ATOL = 1e-5
YEARS = [2016, 2017, 2018]
SPEED_YEARS = list(range(2016, 2023))


# -- data written with tifffile ---------------------------------------------------------------------

def smooth(rng: np.random.Generator, shape: tuple[int, int, int], dtype: str, classes: int = 0) -> np.ndarray:
    """Locally smooth random pixels (so resizing has something to do), or class ids 0..classes-1."""
    h, w, c = shape
    coarse = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, c)).astype(np.float32)
    up = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)[:h, :w] + rng.normal(0, 8, (h, w, c)).astype(np.float32)
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
              grid: bool = False, seed: int = 0) -> pd.DataFrame:
    """Region TIFFs under root/Images/{year}/{region}.tif and their tiles table (long format): ``tiles``
    boxes per region at random places, or with ``grid`` every ``box`` of a grid over the region."""
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
                             compressionargs={"level": 1}, tile=(256, 256) if grid else (32, 32), **options)
        if grid:
            h, w = box
            places = [(y, x) for y in range(0, size[0] - h + 1, h) for x in range(0, size[1] - w + 1, w)]
        else:
            places = []
            for _ in range(tiles):
                h, w = box or (int(rng.integers(12, 60)), int(rng.integers(12, 60)))
                places.append((int(rng.integers(0, size[0] - h)), int(rng.integers(0, size[1] - w)), h, w))
        for k, place in enumerate(places):
            y0, x0 = place[:2]
            h, w = (box if grid else place[2:])
            target = float(rng.random())
            for year in years:
                rows.append({"tile_id": r * 100000 + k, "region_id": r, "label_id": year, "target": target,
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
    # the same data as "one-hot, augmented" without augmentation, with flips only; augmentation alone
    "one-hot": ({"bands": 1, "classes": 5, "seed": 5}, {"n_channels": 1, "num_classes": 5, "dim": (24, 24)}),
    "one-hot, flips": ({"bands": 1, "classes": 5, "seed": 5}, {"n_channels": 1, "num_classes": 5, "augment": "flip",
                                                               "dim": (24, 24)}),
    "augmented": ({"seed": 0}, {"augment": True, "dim": (24, 24)}),
}


# -- part (a) --------------------------------------------------------------------------------------

def compare(got: np.ndarray, expected: np.ndarray, atol: float = ATOL) -> dict:
    """{"ok", "max_abs_diff", "bound"} of two batches; shapes must match. The bound is ``atol``
    times the batch's scale, max(1, max |expected|): float32 rounding grows with the values (a
    normalized uint16 band reaches 3 and more), so outputs up to 1 get ``atol`` itself."""
    if got.shape != expected.shape:
        return {"ok": False, "why": f"shape {got.shape} != {expected.shape}"}
    if not got.size:
        return {"ok": True, "max_abs_diff": 0.0, "bound": atol}
    diff = float(np.max(np.abs(got.astype(np.float64) - expected)))
    bound = atol * max(1.0, float(np.max(np.abs(expected))))
    return {"ok": bool(diff <= bound), "max_abs_diff": diff, "bound": bound}


def host(batch) -> np.ndarray:
    """A DALI output batch (CPU or GPU tensor list) as a NumPy array."""
    if hasattr(batch, "as_cpu"):
        batch = batch.as_cpu()
    return batch.as_array()


def check_parity(device: str, scratch: str, *, names: tuple[str, ...] | None = None, cut_with=None) -> dict:
    """Every SETUPS (or ``names`` of them) on ``device`` against the CPU; on a GPU with ``cut_with``,
    the device store's cut replaced by it."""
    from dalidw import SequenceDataLoader
    from dalidw.runahead import RunAhead

    out = {}
    for k, (name, (data_options, options)) in enumerate(SETUPS.items()):
        if names is not None and name not in names:
            continue
        root = os.path.join(scratch, f"setup{k}" if cut_with is None else f"setup{k}-cut")
        table = write_set(root, years=YEARS, **{"seed": k, **data_options})
        common = {"batch_size": 4, "dim": (20, 28), "random_seed": 5, **options}
        cpu = SequenceDataLoader(YEARS, table, os.path.join(root, "Images"), device="cpu", **common)
        dev = SequenceDataLoader(YEARS, table, os.path.join(root, "Images"), device=device, **common)
        if cut_with is not None:
            if dev.feed.device_store is None:
                raise RuntimeError("no GPU region store to cut with: CuPy missing or unusable")
            dev.feed.device_store.cut_with = cut_with
        run, worst, bound, ok, misses = RunAhead(dev.feed), 0.0, ATOL, True, []
        for epoch in range(2):
            for index in range(len(cpu)):
                cpu.epoch = dev.epoch = epoch  # the CPU loader's own batch of this epoch
                ex, ey = cpu[index]
                gx, gy = run(epoch * len(cpu) + index)
                nx, ny = dev[index]  # the device loader's numpy path
                pairs = {"run ahead x": (host(gx), ex), "run ahead y": (host(gy), ey), "numpy path x": (nx, ex),
                         "numpy path y": (ny, ey)}
                for path, (got, expected) in pairs.items():
                    result = compare(got, expected)
                    ok &= result["ok"]
                    worst = max(worst, result.get("max_abs_diff", np.inf))
                    bound = max(bound, result.get("bound", ATOL))
                    if not result["ok"] and len(misses) < 8:
                        misses.append(miss(dev, epoch, index, path, got, expected, result["bound"]))
        out[name] = {"ok": bool(ok), "max_abs_diff": worst, "bound": bound, "batches": 2 * len(cpu)}
        if misses:
            out[name]["misses"] = misses
    return out


def miss(loader, epoch: int, index: int, path: str, got: np.ndarray, expected: np.ndarray, bound: float) -> dict:
    """Where a batch differs: per sample the pixels off by more than ``bound``, its box size and
    the graph's augmentation flags for it."""
    inputs = loader.feed.inputs(epoch, index)
    positions = loader.feed.positions(epoch, index)
    row = {"epoch": epoch, "batch": index, "path": path, "samples": []}
    if got.shape != expected.shape:
        row["why"] = f"shape {got.shape} != {expected.shape}"
        return row
    for i in range(len(got)):
        off = np.abs(got[i].astype(np.float64) - expected[i]) > bound
        row["samples"].append({"off": int(off.sum()), "of": int(off.size),
                               "box_hw": loader.feed.store.layout.sizes[positions[i]].tolist(),
                               **{flag: int(np.asarray(inputs[flag])[i]) for flag in ("transpose", "flip_h", "flip_v")
                                  if flag in inputs}})
    return row


def check_placement(device: str, scratch: str) -> dict:
    from dalidw import SequenceDataLoader
    from dalidw.pipeline import build_pipeline, placement

    root = os.path.join(scratch, "placement")
    table = write_set(root, years=YEARS, tiles=4)  # boxes of several sizes: the graph slices them
    loader = SequenceDataLoader(YEARS, table, os.path.join(root, "Images"), device=device, batch_size=4,
                                dim=(8, 8), augment=True)
    nodes: list = []
    pipe = build_pipeline(loader.feed.spec, nodes=nodes)  # kept alive while its graph is walked
    ops = placement(nodes)
    del pipe
    return {"ok": bool(ops) and all(d == device for _, d in ops), "operators": [f"{name}: {d}" for name, d in ops]}


VARIANTS = {
    "uint8 RGB, deflate, tiled": ("uint8", 3, {"compression": "zlib", "tile": (64, 64)}),
    "uint8 RGB, uncompressed, strips": ("uint8", 3, {}),
    "uint8 RGB, LZW": ("uint8", 3, {"compression": "lzw"}),
    "uint8 gray, deflate": ("uint8", 1, {"compression": "zlib"}),
    "uint8 4 bands, deflate": ("uint8", 4, {"compression": "zlib"}),
    "uint16 4 bands, deflate, tiled": ("uint16", 4, {"compression": "zlib", "tile": (64, 64)}),
    "float32 2 bands, deflate": ("float32", 2, {"compression": "zlib"}),
    "uint8 RGB, deflate, predictor 2": ("uint8", 3, {"compression": "zlib", "predictor": 2}),
    "uint16 4 bands, deflate, predictor 2, tiled": ("uint16", 4, {"compression": "zlib", "predictor": 2,
                                                                  "tile": (64, 64)}),
    "float32 2 bands, deflate, predictor 3": ("float32", 2, {"compression": "zlib", "predictor": 3}),
}


def check_variants(device: str, scratch: str) -> dict:
    """For each TIFF variant: whether dalidw's decoder on ``device`` gives tifffile's pixels, and by
    which decoder; "skipped" where tifffile here cannot write the variant (LZW without imagecodecs)."""
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
        decoder = RegionDecoder(dtype=np.dtype(dtype), device=device, device_id=0 if device == "gpu" else None)
        try:
            tifffile.imwrite(path, image[..., 0] if bands == 1 else image, **layout, **options)
        except Exception as err:  # noqa: BLE001 - a codec missing here, not a finding
            out[name] = {"skipped": f"tifffile cannot write it here: {type(err).__name__}: {err}"}
            continue
        try:
            decoded = decoder.decode([path], [(128, 96)])[0]
            same = bool(np.array_equal(decoded, read_with_tifffile(path)))
            how = f"tifffile ({decoder.slow_path[path]})" if path in decoder.slow_path else f"DALI {decoder.backend}"
            out[name] = {"ok": same, "decoded_by": how}
            if device == "gpu":
                out[name]["gpu_decoder_alone"] = gpu_decoder_agrees(path, dtype)
        except Exception as err:  # noqa: BLE001 - a report, not a loader
            out[name] = {"ok": False, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    return out


def gpu_decoder_agrees(path: str, dtype: str) -> str:
    """Whether DALI's GPU ("mixed") decoder alone, whatever dalidw picks, gives tifffile's pixels
    for ``path``: "same pixels", "other pixels" or the error it raised."""
    from nvidia.dali import fn, pipeline_def, types

    from dalidw.bands import DALI_TYPE_NAMES
    from dalidw.decode import read_with_tifffile

    @pipeline_def(batch_size=1, num_threads=1, device_id=0, prefetch_queue_depth=1)
    def decode():
        encoded = fn.external_source(name="encoded", batch=False, dtype=types.UINT8)
        return fn.decoders.image(encoded, device="mixed", output_type=types.ANY_DATA,
                                 dtype=getattr(types, DALI_TYPE_NAMES[dtype]))

    try:
        pipe = decode()
        pipe.build()
        with open(path, "rb") as f:
            pipe.feed_input("encoded", [np.frombuffer(f.read(), np.uint8)])
        (out,) = pipe.run()
        pixels = np.array(out.as_cpu()[0])
    except Exception as err:  # noqa: BLE001 - a report
        return f"error: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
    expected = read_with_tifffile(path)
    return "same pixels" if pixels.shape == expected.shape and np.array_equal(pixels, expected) else "other pixels"


def device_memory_gib(device: str) -> float | None:
    """GiB of the GPU's memory in use by every allocator (DALI's, CuPy's, JAX's...), None on the CPU."""
    if device != "gpu":
        return None
    import cupy as cp

    free, total = cp.cuda.runtime.memGetInfo()
    return (total - free) / 2**30


def resident_gib(feed) -> float:
    """GiB of the region tiles a feed holds where it cuts its frames (on the GPU; the host cache on the CPU)."""
    return feed.resident_bytes / 2**30


def threads_cpu_s() -> dict[str, float]:
    """CPU seconds of each live thread of this process so far, by name (a Python thread's own name,
    else the one the OS has: DALI names its threads), the threads of one name summed. Read from
    /proc (nanoseconds from ``schedstat`` where the kernel keeps it, else clock ticks from ``stat``);
    empty where there is no /proc."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        base = f"/proc/self/task/{tid}"
        try:
            with open(f"{base}/comm") as f:
                comm = f.read().strip()
            try:
                with open(f"{base}/schedstat") as f:
                    cpu = int(f.read().split()[0]) / 1e9
            except (OSError, ValueError, IndexError):
                with open(f"{base}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)
        except (OSError, ValueError, IndexError):  # the thread ended meanwhile
            continue
        name = names.get(int(tid), comm)
        out[name] = out.get(name, 0.0) + cpu
    return out


def threads_ms_per_batch(before: dict[str, float], after: dict[str, float], batches: int) -> dict[str, float]:
    """Host milliseconds per batch spent by each thread name between two :func:`threads_cpu_s`
    readings, largest first, names under 0.005 ms left out."""
    spent = {name: 1000 * (cpu - before.get(name, 0.0)) / batches for name, cpu in after.items()}
    return {name: round(ms, 3) for name, ms in sorted(spent.items(), key=lambda item: -item[1]) if ms >= 0.005}


def time_runahead(feed, *, batches: int, depth: int | None = None, outputs_stream=None, device: str = "cpu") -> dict:
    """Samples/s of ``feed``'s graph run ahead as training reads it (``RunAhead``), every region
    resident first: ``batches`` steps timed after an untimed first one (which allocates the graph's
    buffers). Also host cores busy meanwhile (process CPU time of every thread over wall time), the
    host milliseconds per batch of each thread by name (the caller's is "MainThread"), and the
    device memory in use at the end."""
    from dalidw.runahead import RunAhead

    for index in range(len(feed)):  # every region decoded (and resident on the device)
        feed.frames(feed.positions(0, index))
    run = RunAhead(feed, start_epoch=1, depth=depth, outputs_stream=outputs_stream)
    run(0)
    threads0 = threads_cpu_s()
    cpu0, main0, start, samples = time.process_time(), time.thread_time(), time.perf_counter(), 0
    for step in range(1, batches + 1):
        x, _ = run(step)
        samples += len(x)
    if device == "gpu":
        import cupy as cp

        cp.cuda.runtime.deviceSynchronize()
    wall, cpu, main = time.perf_counter() - start, time.process_time() - cpu0, time.thread_time() - main0
    threads = threads_ms_per_batch(threads0, threads_cpu_s(), batches)
    row = {"samples_per_s": samples / wall, "host_cores_busy": cpu / wall,
           "cpu_s_per_1000_samples": 1000 * cpu / samples, "caller_thread_ms_per_batch": 1000 * main / batches,
           "threads_ms_per_batch": threads,
           "batches": batches, "batch": feed.spec.batch_size,
           "depth": run.depth, "device_memory_gib": device_memory_gib(device), "resident_gib": resident_gib(feed)}
    del run
    return row


def profile_runahead(feed, *, batches: int) -> dict:
    """Where the caller's thread spends its time in ``batches`` steps of the feed's graph run ahead
    (cProfile): the 25 functions of most own time, with their calls and seconds."""
    import cProfile
    import pstats

    from dalidw.runahead import RunAhead

    run = RunAhead(feed, start_epoch=1)
    run(0)
    profile = cProfile.Profile()
    profile.enable()
    for step in range(1, batches + 1):
        run(step)
    profile.disable()
    stats = pstats.Stats(profile)
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:25]
    return {"batches": batches, "total_s": stats.total_tt,
            "by_own_time": [f"{tt:.4f}s own, {ct:.4f}s total, {nc} calls: {os.path.basename(file)}:{line} {name}"
                            for (file, line, name), (_, nc, tt, ct, _) in rows]}


def gather_resize(xp, stacks, regions, boxes, dim: tuple[int, int], gain: float):
    """The peer written with array ops alone (NumPy or CuPy): crops of ``stacks`` (R, T, H, W, C),
    sample i from region ``regions[i]`` in box ``boxes[i]`` = (y, x, h, w), resized bilinearly to
    ``dim`` with pixel centres at +0.5 and edges clamped to the box (as slicing then resizing does),
    times ``gain``. Returns float32 (B, T, dim[0], dim[1], C)."""
    frames = stacks.shape[1]
    b = xp.asarray(boxes).astype(xp.float32)

    def axis(origin, extent, n):
        """(B, n) first source index, second source index and weight of the second along one axis."""
        pos = (xp.arange(n, dtype=xp.float32)[None, :] + 0.5) * (extent[:, None] / n) - 0.5
        pos = xp.clip(pos, 0, extent[:, None] - 1)
        low = xp.floor(pos)
        high = xp.minimum(low + 1, extent[:, None] - 1)
        return (low + origin[:, None]).astype(xp.int32), (high + origin[:, None]).astype(xp.int32), pos - low

    y0, y1, wy = axis(b[:, 0], b[:, 2], dim[0])
    x0, x1, wx = axis(b[:, 1], b[:, 3], dim[1])
    r = xp.asarray(regions).astype(xp.int32)[:, None, None, None]
    t = xp.arange(frames, dtype=xp.int32)[None, :, None, None]
    ya, yb, xa, xb = y0[:, None, :, None], y1[:, None, :, None], x0[:, None, None, :], x1[:, None, None, :]
    wy, wx = wy[:, None, :, None, None], wx[:, None, None, :, None]
    top = stacks[r, t, ya, xa] * (1 - wx) + stacks[r, t, ya, xb] * wx
    bottom = stacks[r, t, yb, xa] * (1 - wx) + stacks[r, t, yb, xb] * wx
    return ((top * (1 - wy) + bottom * wy) * gain).astype(xp.float32)


def peer_data(feed, images_root: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The peers' data: every region's stack in one uint8 array (R, T, H, W, C), decoded with
    tifffile; the slot in it of each tile's region; and each tile's box as (y, x, h, w)."""
    import tifffile

    regions = list(dict.fromkeys(feed.table.region_ids.tolist()))  # in the order of the feed's region columns
    stacks = np.stack([np.stack([tifffile.imread(os.path.join(images_root, str(year), f"{region}.tif"))
                                 for year in SPEED_YEARS]) for region in regions])
    boxes = feed.table.boxes
    yxhw = np.stack([boxes[:, 1], boxes[:, 0], boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]], axis=1)
    return stacks, feed.regions, yxhw.astype(np.int32)


def time_peer(feed, cut, to_numpy, *, batches: int, sync=None) -> dict:
    """Samples/s of a peer: ``cut(positions)`` gives the batch x of the tiles at ``positions``, the
    same batches as ``feed``'s; ``to_numpy`` brings one to the host. Also its largest difference from
    ``feed``'s own first batch, and host cores busy."""

    def positions(step: int) -> np.ndarray:
        return feed.positions(1 + step // len(feed), step % len(feed))

    expected, _ = feed.run(feed.inputs(1, 0))
    diff = float(np.max(np.abs(to_numpy(cut(positions(0))) - expected)))
    cut(positions(1))
    if sync:
        sync()
    cpu0, start, samples = time.process_time(), time.perf_counter(), 0
    for step in range(batches):
        samples += len(cut(positions(step)))
    if sync:
        sync()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    return {"samples_per_s": samples / wall, "max_abs_diff_vs_dalidw": diff, "host_cores_busy": cpu / wall,
            "batches": batches}


def time_gather(feed, data, xp, *, batches: int, sync=None) -> dict:
    """:func:`time_peer` of :func:`gather_resize` with every region resident in one array (on the
    GPU: CuPy)."""
    stacks, slot, boxes = data
    stacks, gain = xp.asarray(stacks), float(feed.spec.gain[0])

    def cut(positions):
        return gather_resize(xp, stacks, slot[positions], boxes[positions], feed.spec.dim, gain)

    return time_peer(feed, cut, lambda x: x.get() if hasattr(x, "get") else x, batches=batches, sync=sync)


def time_roi_align(feed, data, *, batches: int) -> dict:
    """:func:`time_peer` of torchvision's ``roi_align`` (aligned, one sample per bin: bilinear with
    pixel centres at +0.5, but reading past a box's edge into its region) on every region resident
    on the GPU as float32 planes, output laid out as dalidw's (B, T, H, W, C)."""
    import torch
    from torchvision.ops import roi_align

    stacks, slot, boxes = data
    stacks = torch.from_numpy(stacks).cuda()
    count, frames, height, width, channels = stacks.shape
    planes = stacks.permute(0, 1, 4, 2, 3).reshape(count * frames, channels, height, width).float()
    gain, (oh, ow) = float(feed.spec.gain[0]), feed.spec.dim
    steps = torch.arange(frames, device="cuda")

    def cut(positions):
        box = torch.from_numpy(boxes[positions]).cuda().float()
        r = torch.from_numpy(slot[positions]).cuda()
        index_of = (r[:, None] * frames + steps[None]).reshape(-1).float()
        y, x, h, w = (box[:, k].repeat_interleave(frames) for k in range(4))
        rois = torch.stack([index_of, x, y, x + w, y + h], dim=1)
        out = roi_align(planes, rois, output_size=(oh, ow), spatial_scale=1.0, sampling_ratio=1, aligned=True)
        return (out.view(len(positions), frames, channels, oh, ow).permute(0, 1, 3, 4, 2) * gain).contiguous()

    return time_peer(feed, cut, lambda x: x.cpu().numpy(), batches=batches, sync=torch.cuda.synchronize)


def speed_data(device: str, scratch: str) -> tuple[str, pd.DataFrame]:
    """The speed rows' data: 4 regions (1024x1024 on a GPU, 256x256 on the CPU) of T=7 years and
    512 (96) boxes of 40x45 each at random places. Returns (images folder, tiles table)."""
    root = os.path.join(scratch, "speed")
    gpu = device == "gpu"
    table = write_set(root, years=SPEED_YEARS, regions=4, size=(1024, 1024) if gpu else (256, 256), box=(40, 45),
                      tiles=500 if gpu else 96)
    return os.path.join(root, "Images"), table


def time_graph(device: str, scratch: str, *, batches: int) -> dict:
    """The speed check, all rows on this machine in this run (see the module docstring)."""
    from dalidw import SequenceDataLoader

    images, table = speed_data(device, scratch)
    gpu = device == "gpu"

    def loader(on: str = device, batch: int = 256 if gpu else 32):
        return SequenceDataLoader(SPEED_YEARS, table, images, dim=(64, 64), batch_size=batch, device=on,
                                  random_seed=1)

    feed = loader().feed
    xp, sync, stream = np, None, None
    if gpu:
        import cupy as cp

        xp, sync, stream = cp, cp.cuda.runtime.deviceSynchronize, cp.cuda.Stream(non_blocking=True)
    out: dict = {"setup": {"batch": feed.spec.batch_size, "frames": feed.spec.frames, "box": list(feed.box()),
                           "output": [*feed.spec.dim, feed.spec.channels], "host_cores": os.cpu_count(),
                           "regions": 4, "tiles": len(feed.table)}}
    few = max(3, batches // 4)
    other_depth = 2 if gpu else 3  # against the default, runahead.DEPTH
    rows = {
        "dalidw graph": lambda: time_runahead(feed, batches=batches, device=device),
        "dalidw graph, outputs on a CUDA stream": (lambda: time_runahead(feed, batches=batches, device=device,
                                                                         outputs_stream=stream)) if gpu else None,
        f"dalidw graph, {other_depth} batches ahead": lambda: time_runahead(feed, batches=batches, depth=other_depth,
                                                                           device=device),
        "dalidw graph, resize minibatch 32 (DALI's default)": (lambda: time_runahead(
            feed.with_graph(resize_minibatch=32), batches=batches, device=device)) if gpu else None,
        "dalidw graph, resize minibatch 256": (lambda: time_runahead(feed.with_graph(resize_minibatch=256),
                                                                     batches=batches, device=device)) if gpu else None,
        "dalidw graph, 1 DALI CPU thread": (lambda: time_runahead(feed.with_graph(num_threads=1), batches=batches,
                                                                  device=device)) if gpu else None,
        "dalidw graph, batch 1024": lambda: time_runahead(loader(batch=1024 if gpu else 64).feed, batches=few,
                                                          device=device),
        "dalidw graph fed host crops": lambda: time_runahead(feed.moved(host_frames=True), batches=few,
                                                             device=device),
        "dalidw graph, device cpu": (lambda: time_runahead(loader("cpu").feed, batches=max(3, batches // 10)))
        if gpu else None,
    }
    # untimed: the first timed row of a run was the slowest (clocks and pools warming up)
    guarded(lambda: time_runahead(feed, batches=few, device=device))
    for name, row in rows.items():
        if row is not None:
            out[name] = guarded(row)
            gc.collect()
    out["profile of the caller's thread, dalidw graph"] = guarded(lambda: profile_runahead(feed, batches=batches))
    data = peer_data(feed, images)
    out["peer: array ops, regions resident"] = guarded(lambda: time_gather(feed, data, xp, batches=batches, sync=sync))
    if gpu:
        out["peer: torchvision roi_align, regions resident"] = guarded(lambda: time_roi_align(feed, data,
                                                                                            batches=batches))
        # last: a fault of the kernel, not yet the default, would take the CUDA context with it
        out["dalidw graph, frames cut by one kernel"] = guarded(lambda: time_kernel_cut(feed, batches=batches))
    return out


def time_kernel_cut(feed, *, batches: int) -> dict:
    """:func:`time_runahead` of ``feed``'s graph on the GPU, its frames cut by one kernel launch per batch
    (``dalidw.cut_kernel``) in place of the device store's default cut."""
    from dalidw.cut_kernel import cut_with_kernel

    return with_cut(feed, cut_with_kernel, lambda: time_runahead(feed, batches=batches, device="gpu"))


def with_cut(feed, cut_with, work):
    """``work()`` with the feed's device store cutting frames with ``cut_with``."""
    store = feed.device_store
    before = store.cut_with
    store.cut_with = cut_with
    try:
        return work()
    finally:
        store.cut_with = before


def check_cut_kernel(device: str, scratch: str) -> dict:
    """The one-launch cut (``dalidw.cut_kernel``), not yet the default: on a GPU, parity of three
    setups through it against the CPU (boxes of several sizes, uint16, class maps turned and
    flipped); on the CPU, its frame table copied on the host against the host cut."""
    if device == "gpu":
        from dalidw.cut_kernel import cut_with_kernel

        return check_parity(device, scratch, names=("boxes of several sizes", "uint16 mean/std",
                                                    "one-hot, augmented"), cut_with=cut_with_kernel)
    from dalidw import SequenceDataLoader
    from dalidw.cut_kernel import copy_rows, frame_table
    from dalidw.regions import cut_frames

    root = os.path.join(scratch, "cut-kernel")
    table = write_set(root, years=YEARS, tiles=12)
    loader = SequenceDataLoader(YEARS, table, os.path.join(root, "Images"), device="cpu", batch_size=8)
    store = loader.feed.store
    positions = loader.feed.positions(0, 0)
    tiles = store.tiles(store.layout.regions[positions])
    h, w = store.layout.sizes[positions].max(axis=0)
    expected = cut_frames(store.layout, tiles, positions, np.zeros((len(positions), len(YEARS), h, w, 3), np.uint8))
    got = copy_rows(frame_table(store.layout, tiles, positions, 3, 1), np.zeros_like(expected))
    return {"host copies of the frame table": {"ok": bool(np.array_equal(got, expected))}}


#: CUDA's flag that makes a host thread waiting for the GPU sleep rather than spin
#: (``CU_CTX_SCHED_BLOCKING_SYNC``); by default, with one context and more cores than that, it spins.
BLOCKING_SYNC = 0x04


def blocking_sync_context() -> dict:
    """GPU 0's primary CUDA context set to block waiting host threads (driver API), before anything in
    this process creates it: the flags read back, and whether the context was already active."""
    import ctypes

    cuda = ctypes.CDLL("libcuda.so.1")

    def call(name: str, *args) -> None:
        function = getattr(cuda, name + "_v2", None) or getattr(cuda, name)
        code = function(*args)
        if code != 0:
            raise RuntimeError(f"{name} failed with CUDA error {code}")

    device, flags, active = ctypes.c_int(), ctypes.c_uint(), ctypes.c_int()
    call("cuInit", ctypes.c_uint(0))
    call("cuDeviceGet", ctypes.byref(device), 0)
    call("cuDevicePrimaryCtxSetFlags", device, ctypes.c_uint(BLOCKING_SYNC))
    call("cuDevicePrimaryCtxGetState", device, ctypes.byref(flags), ctypes.byref(active))
    return {"flags": flags.value, "blocking_sync": bool(flags.value & BLOCKING_SYNC),
            "context_was_active": bool(active.value)}


def blocking_sync_rows(device: str, scratch: str, *, batches: int) -> dict:
    """(In a process of its own.) The loader's graph as in the speed check's first row, and with the
    one-kernel cut, with host threads that wait for the GPU sleeping instead of spinning. On the
    CPU the same rows, without the flag (the mechanics only)."""
    from dalidw import SequenceDataLoader

    gpu = device == "gpu"
    out: dict = {"cuda_context": blocking_sync_context() if gpu else {"skipped": "on the CPU: no flag to set"}}
    images, table = speed_data(device, os.path.join(scratch, "blocking-sync"))
    feed = SequenceDataLoader(SPEED_YEARS, table, images, dim=(64, 64), batch_size=256 if gpu else 32,
                              device=device, random_seed=1).feed
    guarded(lambda: time_runahead(feed, batches=max(3, batches // 4), device=device))  # untimed warm-up
    out["dalidw graph"] = guarded(lambda: time_runahead(feed, batches=batches, device=device))
    if gpu:
        out["dalidw graph, frames cut by one kernel"] = guarded(lambda: time_kernel_cut(feed, batches=batches))
    out["ok"] = all(row.get("ok", True) for row in out.values() if isinstance(row, dict))
    return out


def check_blocking_sync(device: str, scratch: str, *, batches: int) -> dict:
    """:func:`blocking_sync_rows` in a process of its own (the flag must be set before CUDA starts)."""
    return in_own_process("--blocking-sync", device, scratch, "--batches", str(batches))


def in_own_process(option: str, device: str, scratch: str, *args: str, env: dict | None = None) -> dict:
    """The section this script runs for ``option`` (one of its hidden options), run by a new process of
    it that writes the section's JSON into ``scratch``; {"ok": False, "error": ...} where it fails. This
    process's pools let their free blocks go first, so the new process finds the device memory free."""
    release_unused_memory(device)
    path = os.path.join(scratch, option.strip("-") + ".json")
    cmd = [sys.executable, os.path.abspath(__file__), option, path, "--device", device, "--scratch", scratch, *args]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if run.returncode != 0 or not os.path.isfile(path):
        return {"ok": False, "error": (run.stderr or run.stdout).strip().splitlines()[-3:]}
    with open(path) as f:
        return json.load(f)


def time_large_regions(device: str, scratch: str, *, batches: int) -> dict:
    """Regions of 4096x4096 pixels and 7 years (512x512 on the CPU), 2 of them, tiled by a grid of 40x45
    boxes, through the loader's graph: samples/s, the bytes resident, the device memory in use (at
    the start, with what earlier sections left cached let go; at the end; and at the end with the
    pools' free blocks let go)."""
    from dalidw import SequenceDataLoader

    gpu = device == "gpu"
    side = 4096 if gpu else 512
    root = os.path.join(scratch, "large")
    start = time.perf_counter()
    table = write_set(root, years=SPEED_YEARS, regions=2, size=(side, side), box=(40, 45), grid=True)
    written = time.perf_counter() - start
    at_start = release_unused_memory(device)
    loader = SequenceDataLoader(SPEED_YEARS, table, os.path.join(root, "Images"), dim=(64, 64),
                                batch_size=256 if gpu else 32, device=device, random_seed=1)
    start = time.perf_counter()
    row = time_runahead(loader.feed, batches=batches, device=device)
    row.update({"region_pixels": [side, side], "regions": 2, "tiles": len(loader.table),
                "seconds_to_write": written, "seconds_to_decode_and_time": time.perf_counter() - start,
                "stack_gib_each": len(SPEED_YEARS) * side * side * 3 / 2**30,
                "decoder_backend": loader.feed.store.decoder.backend,
                "device_memory_gib_at_start": at_start,
                "device_memory_gib_unused_released": release_unused_memory(device)})
    return row


def release_unused_memory(device: str) -> float | None:
    """GiB of device memory in use once DALI's and CuPy's pools have let their free blocks go (what
    earlier sections left cached, or what the pools keep beyond the live buffers); None on the CPU."""
    if device != "gpu":
        return None
    import cupy as cp
    from nvidia.dali.backend import ReleaseUnusedMemory

    gc.collect()
    cp.cuda.runtime.deviceSynchronize()
    cp.get_default_memory_pool().free_all_blocks()
    ReleaseUnusedMemory()
    return device_memory_gib(device)


def guarded(work) -> dict:
    """``work()``, or {"ok": False, "error": ..., "where": ...} when it raises: one check's failure
    is reported without losing the others'."""
    try:
        return work()
    except Exception as err:  # noqa: BLE001 - a report, not a loader
        where = [line.strip() for line in traceback.format_exc().splitlines() if line.strip().startswith("File")][-3:]
        return {"ok": False, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}",
                "where": where}


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


# -- part (c) --------------------------------------------------------------------------------------

def check_training(device: str, scratch: str) -> dict:
    """Part (c) in a process of its own, Keras on JAX (``--part-c``), where Keras and JAX are installed."""
    import importlib.util

    missing = [name for name in ("keras", "jax") if importlib.util.find_spec(name) is None]
    if missing:
        return {"skipped": f"not installed: {', '.join(missing)}"}
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    return in_own_process("--part-c", device, scratch, env=env)


def resident_dataset(batches: list):
    """A Keras ``PyDataset`` of ``batches``, ready (already on the device): the loader absent."""
    import keras

    class Resident(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)

        def __len__(self):
            return len(batches)

        def __getitem__(self, index):
            return batches[index]

    return Resident()


def fit_timing(model, fed, resident, *, rounds: int) -> dict:
    """``model.fit`` of one compiled ``model`` for one warm-up epoch on ``fed`` (compiling each batch
    shape, the partial last batch's too) and one on ``resident``, then ``rounds`` rounds of one epoch on ``fed`` (the
    loader's PyDataset) and one on ``resident`` (the same batches, ready), alternating, so both see
    the same compiled steps and the same machine state. Per side: steps/s, seconds per step (wall
    over steps), the median step, host cores busy (process CPU time over wall time); the warm-up
    epoch's seconds and its last (partial batch) step, compilation included."""
    import keras

    times: list[float] = []
    clock = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: times.append(time.perf_counter()),
                                           on_epoch_begin=lambda epoch, logs: times.append(time.perf_counter()))
    start = time.perf_counter()
    model.fit(fed, epochs=1, shuffle=False, verbose=0, callbacks=[clock])
    out: dict = {"warm_up_epoch_s": time.perf_counter() - start,
                 "partial_batch_first_step_s": float(np.diff(times)[-1]) if len(times) > 1 else None}
    start = time.perf_counter()  # a compiled step that the resident arrays still needed shows here
    model.fit(resident, epochs=1, shuffle=False, verbose=0)
    out["resident_warm_up_epoch_s"] = time.perf_counter() - start
    sides = {"fed_by_dalidw": fed, "resident_batches": resident}
    wall = dict.fromkeys(sides, 0.0)
    cpu = dict.fromkeys(sides, 0.0)
    steps: dict = {side: [] for side in sides}
    for _ in range(rounds):
        for side, data in sides.items():
            times.clear()
            cpu0, start = time.process_time(), time.perf_counter()
            model.fit(data, epochs=1, shuffle=False, verbose=0, callbacks=[clock])
            wall[side] += time.perf_counter() - start
            cpu[side] += time.process_time() - cpu0
            steps[side].extend(np.diff(times).tolist())
    for side, data in sides.items():
        n = rounds * len(data)
        out[side] = {"steps_per_s": n / wall[side], "step_s": wall[side] / n, "steps": n,
                     "median_step_s": float(np.median(steps[side])) if steps[side] else None,
                     "host_cores_busy": cpu[side] / wall[side]}
    out["input_overhead"] = out["fed_by_dalidw"]["step_s"] / out["resident_batches"]["step_s"] - 1
    median = (out["fed_by_dalidw"]["median_step_s"], out["resident_batches"]["median_step_s"])
    out["input_overhead_median_step"] = median[0] / median[1] - 1 if all(median) else None
    return out


def part_c(device: str, scratch: str) -> dict:
    """(Keras on JAX.) The loader's share of a training step (see the module docstring)."""
    import jax
    import keras

    from dalidw import SequenceDataLoader
    from dalidw.train import build_model

    gpu = device == "gpu"
    years = SPEED_YEARS if gpu else YEARS
    root = os.path.join(scratch, "fit")
    table = write_set(root, years=years, regions=4, size=(1024, 1024) if gpu else (128, 128), box=(40, 45),
                      tiles=650 if gpu else 10)  # 2600 tiles: 10 batches of 256 and one of 40 an epoch
    batch, dim = (256, (64, 64)) if gpu else (8, (8, 8))
    loader = SequenceDataLoader(years, table, os.path.join(root, "Images"), dim=dim, batch_size=batch,
                                device=device, random_seed=1)
    out = {"backend": keras.backend.backend(), "jax_devices": [str(d) for d in jax.devices()], "batch": batch,
           "frames": len(years), "dim": list(dim), "tiles": loader.n_tiles, "batch_sizes": loader.batch_sizes.tolist()}
    # every batch of an epoch held at once, as JAX arrays, then compared with the NumPy path's:
    # a buffer of DALI's reused while JAX still holds it would show here
    data = loader.as_pydataset(backend="jax")
    held = [data[i] for i in range(len(data))]
    x = held[0][0]
    out["batch_type"] = f"{type(x).__module__}.{type(x).__name__}"
    out["batch_device"] = str(next(iter(x.devices()))) if hasattr(x, "devices") else "host (NumPy)"
    loader.epoch = 0
    out["held_batches"] = [compare(np.asarray(got), expected) for (got, _), (expected, _) in zip(held, loader)]
    del held, data, x
    # committed to the device, as the loader's arrays are (JAX compiles a step per placement kind)
    resident = [tuple(jax.device_put(np.asarray(a), jax.devices()[0]) for a in loader[i]) for i in range(len(loader))]
    models = {"default": 16, "large": 64} if gpu else {"default": 2, "large": 4}  # JAX on the CPU is slow
    for model, filters in models.items():
        keras.utils.set_random_seed(0)
        net = build_model(len(years), dim, loader.n_channels, filters=filters)
        net.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        loader.epoch = 0
        out[model] = {"filters": filters, **fit_timing(net, loader.as_pydataset(backend="jax"),
                                                       resident_dataset(resident), rounds=3 if gpu else 1)}
        out[model]["device_memory_gib"] = device_memory_gib(device)
        del net
        gc.collect()
    out["ok"] = all(np.isfinite(out[model]["input_overhead"]) for model in models) \
        and all(row["ok"] for row in out["held_batches"])
    return out


def cupy_smoke() -> dict:
    """Without DALI: the device store's cut (CuPy) equals the host cut (NumPy), for a region kept as
    blocks of one size, one of mixed sizes and one kept as its stack, with a padded output; and a
    CuPy batch reaches JAX through DLPack on the same GPU where JAX is installed."""
    import cupy as cp

    from dalidw.cut_kernel import cut_with_kernel
    from dalidw.regions import RegionTiles, TileLayout, cut_frames

    rng = np.random.default_rng(0)
    shapes = [(7, 600, 660, 3), (7, 600, 660, 3), (7, 200, 220, 3)]  # the last one is kept as its stack
    stacks = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in shapes]
    regions, boxes = [], []
    for region, n, sizes in ((0, 60, [(40, 45)]), (1, 40, [(40, 45), (30, 20)]), (2, 400, [(50, 60)])):
        for k in range(n):
            h, w = sizes[k % len(sizes)]
            y, x = int(rng.integers(0, 200 - h)), int(rng.integers(0, 220 - w))  # inside every stack
            regions.append(region)
            boxes.append((x, y, x + w, y + h))
    layout = TileLayout.plan(np.array(regions), np.array(boxes), [s.shape for s in stacks], 1)
    host = {r: RegionTiles.from_stack(layout, r, stacks[r]) for r in range(3)}
    device = {r: tiles.map(cp.asarray) for r, tiles in host.items()}
    out: dict = {"as_blocks": list(layout.as_blocks)}
    stream = cp.cuda.Stream(non_blocking=True)
    for name, positions in (("one size", np.arange(0, 60)), ("every region", rng.permutation(len(regions))[:256])):
        frame = layout.sizes[positions].max(axis=0)
        expected = cut_frames(layout, host, positions, np.zeros((len(positions), 7, *frame, 3), np.uint8))
        with stream:
            got = cut_frames(layout, device, positions, cp.zeros((len(positions), 7, *frame, 3), cp.uint8))
            by_kernel = cut_with_kernel(layout, device, positions, cp.zeros((len(positions), 7, *frame, 3), cp.uint8))
        stream.synchronize()
        out[name] = {"equal": bool(np.array_equal(cp.asnumpy(got), expected)), "shape": list(expected.shape)}
        out[name + ", one kernel"] = {"equal": bool(np.array_equal(cp.asnumpy(by_kernel), expected))}
    try:
        import jax
        import jax.numpy as jnp

        batch = cp.arange(12, dtype=cp.float32).reshape(3, 4)
        moved = jax.dlpack.from_dlpack(batch)
        out["jax_dlpack"] = {"device": str(next(iter(moved.devices()))),
                             "equal": bool(np.array_equal(np.asarray(jnp.asarray(moved)), cp.asnumpy(batch)))}
    except ImportError:
        out["jax_dlpack"] = {"skipped": "JAX not installed"}
    out["ok"] = all(row.get("equal", True) for row in out.values() if isinstance(row, dict))
    return out


# -- the run ---------------------------------------------------------------------------------------

def card_name() -> str:
    """The name of GPU 0, as CUDA gives it."""
    import cupy as cp

    return cp.cuda.runtime.getDeviceProperties(0)["name"].decode()


def summarize(summary: dict) -> dict:
    """The headline figures of a run (None where a section did not give them)."""
    speed, large, fit = summary.get("graph_speed", {}), summary.get("large_regions", {}), summary.get("training", {})

    def figure(row: dict | None, key: str):
        return row.get(key) if isinstance(row, dict) else None

    peers = [figure(speed.get(name), "samples_per_s") for name in speed if name.startswith("peer")]
    graph = speed.get("dalidw graph")
    parity = summary.get("parity", {})
    default = fit.get("default", {}) if isinstance(fit, dict) else {}
    return {
        "card": summary.get("card"),
        "graph_samples_per_s": figure(graph, "samples_per_s"),
        "graph_host_cores_busy": figure(graph, "host_cores_busy"),
        "best_peer_samples_per_s": max((p for p in peers if p is not None), default=None),
        "device_memory_gib": figure(graph, "device_memory_gib"),
        "stacks_gib": figure(graph, "resident_gib"),
        "crops_fed_samples_per_s": figure(speed.get("dalidw graph fed host crops"), "samples_per_s"),
        "large_regions_samples_per_s": figure(large, "samples_per_s"),
        "large_regions_device_memory_gib": figure(large, "device_memory_gib"),
        "large_regions_stacks_gib": figure(large, "resident_gib"),
        "parity_ok": bool(parity) and all(r.get("ok", False) for r in parity.values() if isinstance(r, dict)),
        "fit_input_overhead": default.get("input_overhead") if isinstance(default, dict) else None,
        "fit_backend": fit.get("backend") if isinstance(fit, dict) else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--self-test", action="store_true", help="run the checks on the CPU (no GPU needed)")
    parser.add_argument("--out", default=None, help="also write the JSON summary here")
    parser.add_argument("--batches", type=int, default=None, help="batches timed (default: 200 GPU, 10 CPU)")
    parser.add_argument("--only", default=None,
                        help="comma-separated sections to run (default: all); the others are kept from --out")
    parser.add_argument("--cupy-smoke", action="store_true",
                        help="only check the device store's CuPy cut against the host's (needs CuPy, not DALI)")
    parser.add_argument("--part-c", default=None, help=argparse.SUPPRESS)  # the training part's own process
    parser.add_argument("--blocking-sync", default=None, help=argparse.SUPPRESS)  # that section's own process
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part_c:
        result = guarded(lambda: part_c(args.device, args.scratch))
        write(result, args.part_c)
        return 0
    if args.blocking_sync:
        result = guarded(lambda: blocking_sync_rows(args.device, args.scratch, batches=args.batches))
        write(result, args.blocking_sync)
        return 0

    if args.cupy_smoke:
        result = guarded(cupy_smoke)
        return report(result, args.out, ok=result.get("ok", False))
    from dalidw.devices import gpu_count

    gpus = gpu_count()
    summary: dict = {}
    if args.only and args.out and os.path.isfile(args.out):  # the sections of an earlier run stay
        with open(args.out) as f:
            summary = json.load(f)
    summary["gpus_seen_by_dali"] = gpus
    if args.self_test:
        device = "cpu"
    elif gpus:
        device = "gpu"
        summary["card"] = guarded(card_name)
    else:
        summary["skipped"] = "no GPU that DALI sees: nothing measured (run with --self-test to check on the CPU)"
        return report(summary, args.out, ok=True)
    summary["device"] = device
    summary["versions"] = versions()
    batches = args.batches or (200 if device == "gpu" else 10)
    sections = {
        "placement": lambda: check_placement(device, scratch),
        "parity": lambda: check_parity(device, scratch),
        "tiff_variants": lambda: check_variants(device, scratch),
        "graph_speed": lambda: time_graph(device, scratch, batches=batches),
        "large_regions": lambda: time_large_regions(device, scratch, batches=max(3, batches // 4)),
        "blocking_sync": lambda: check_blocking_sync(device, scratch, batches=batches),
        "tensorflow": (lambda: check_tensorflow(scratch)) if device == "gpu"
        else (lambda: {"skipped": "self-test on the CPU"}),
        "training": lambda: check_training(device, scratch),
        "cut_kernel": lambda: check_cut_kernel(device, scratch),  # last, for the same reason as its speed row
    }
    if args.only:
        unknown = set(args.only.split(",")) - set(sections)
        if unknown:
            parser.error(f"unknown section(s) {sorted(unknown)}; sections: {', '.join(sections)}")
        sections = {name: run for name, run in sections.items() if name in args.only.split(",")}
    summary.setdefault("seconds", {})
    with tempfile.TemporaryDirectory() as scratch:
        for name, section in sections.items():
            start = time.perf_counter()
            summary[name] = guarded(section)
            summary["seconds"][name] = round(time.perf_counter() - start, 1)
            summary["summary"] = summarize(summary)
            print(f"gpu_check: {name} done in {summary['seconds'][name]} s", file=sys.stderr, flush=True)
            if args.out:  # what has been measured so far survives a later crash or time-out
                write(summary, args.out)
    return report(summary, args.out, ok=passed(summary))


def passed(summary: dict) -> bool:
    """Whether every check of ``summary`` passed: placement, every parity setup, every TIFF variant
    written, the TensorFlow and training parts where they ran, and every speed row (a section that
    raised has {"ok": False} at its top)."""
    parity, variants, speed = (summary.get(name, {}) for name in ("parity", "tiff_variants", "graph_speed"))
    ran = ("parity", "tiff_variants", "graph_speed", "large_regions", "blocking_sync", "tensorflow", "training",
           "cut_kernel")
    sections_ran = all(summary.get(name, {}).get("ok", True) for name in ran)
    return bool(sections_ran and summary.get("placement", {}).get("ok", False)
                and all(r.get("ok", False) for r in parity.values() if isinstance(r, dict))
                and all(r.get("ok", False) for r in variants.values() if isinstance(r, dict) and "skipped" not in r)
                and all(r.get("ok", True) for r in speed.values() if isinstance(r, dict))
                and all(r.get("ok", False) for r in summary.get("cut_kernel", {}).values() if isinstance(r, dict)))


def versions() -> dict:
    """The versions of the packages the check ran with (None where one is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("nvidia-dali-cuda130", "nvidia-dali-cuda120", "cupy-cuda13x", "cupy-cuda12x", "numpy", "pandas",
                 "tifffile", "torch", "torchvision", "tensorflow", "keras", "jax", "jaxlib"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def write(summary: dict, path: str) -> None:
    """``summary`` as JSON at ``path``."""
    with open(path, "w") as f:
        f.write(json.dumps(summary, indent=2, default=str))


def report(summary: dict, path: str | None, *, ok: bool) -> int:
    summary["ok"] = bool(ok)
    print(json.dumps(summary, indent=2, default=str))
    if path:
        write(summary, path)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
