"""The GPU check: does dalidw's graph run on the GPU, agree with the CPU, and how fast is it?

    python bench/gpu_check.py [--out check.json]      # on a machine with one NVIDIA GPU (about a minute)
    python bench/gpu_check.py --self-test             # the same mechanics on the CPU (CI runs this)

Part (a) needs numpy, pandas, tifffile, DALI and (on a GPU) CuPy, not TensorFlow:
  - placement: every operator on the data path of the graph runs on the device asked for;
  - parity: for six setups (boxes of several sizes, of one size, "last-image", uint16 with mean/std,
    float32, one-hot class maps with augmentation), every batch of the graph that cuts crops from
    region stacks resident on the device equals the CPU loader's batch within 1e-5 (times the
    batch's scale, max(1, max |x|));
  - TIFF variants: which ones dalidw's decoder reads with tifffile's pixels, and on a GPU whether
    DALI's GPU decoder alone does;
  - speed, every row in one run (T=7, 64x64x3, batch 256, 40x45 boxes, regions resident):
    samples/s, host ms spent preparing each batch, host cores busy and device memory for the
    region graph; the same for the crop graph (crops cut on the host) on the device and, on a GPU,
    on the CPU; and two peers without DALI on the same resident regions: array ops (CuPy on a GPU,
    NumPy on the CPU) and, where installed, torchvision's roi_align.
Part (b), only where TensorFlow sees a GPU: ``dataset()`` elements arrive on the GPU, one epoch of
``model.fit``, and a MirroredStrategy epoch.

With ``--self-test`` the device is the CPU: the "regions" graph (region stacks referenced, DALI
slices) is compared with the loader's "crops" graph (crops cut on the host). Without a GPU and
without ``--self-test`` it says so and exits 0, measuring nothing. The JSON summary is printed
and written to ``--out`` (also after each section, so a crash or time-out keeps what was
measured); a section that raises is reported as such and the others still run; the exit status
is 1 when a check fails.

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
import traceback

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
        feed, worst, bound, ok = device_feed(dev, cpu, device), 0.0, ATOL, True
        for epoch in range(2):
            for index in range(len(cpu)):
                cpu.epoch = epoch  # the CPU loader's own batch of this epoch
                ex, ey = cpu[index]
                gx, gy = feed.run(feed.inputs(epoch, index))
                for result in (compare(gx, ex), compare(gy, ey)):
                    ok &= result["ok"]
                    worst = max(worst, result.get("max_abs_diff", np.inf))
                    bound = max(bound, result.get("bound", ATOL))
        out[name] = {"ok": bool(ok), "max_abs_diff": worst, "bound": bound, "batches": 2 * len(cpu)}
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


def speed_loader(device: str, scratch: str):
    """The speed check's loader: T=7 regions, 40x45 boxes resized to 64x64x3 (regions of 1024x1024
    and batch 256 on the GPU; smaller on the CPU self-test), its tiles table and images folder."""
    from dalidw import SequenceDataLoader

    root = os.path.join(scratch, "speed")
    years = list(range(2016, 2023))
    size = (1024, 1024) if device == "gpu" else (256, 256)
    table = write_set(root, years=years, regions=4, size=size, box=(40, 45), tiles=512 if device == "gpu" else 96)
    batch = 256 if device == "gpu" else 32

    def make(on: str, **options):
        return SequenceDataLoader(years, table, os.path.join(root, "Images"), dim=(64, 64), batch_size=batch,
                                  device=on, random_seed=1, **options)

    return make


def after_warm_up(feed, step: int) -> tuple[int, int]:
    """(epoch, batch index) of the ``step``-th batch after ``feed``'s warm-up epoch."""
    return 1 + step // len(feed), step % len(feed)


def run_ahead(pipe, give, *, batches: int, depth: int, sync=None):
    """Run ``pipe`` as a loader does: ``give(step)`` feeds the step-th batch, DALI holds ``depth``
    fed batches ahead, and ``batches`` runs are timed after an untimed first one (which allocates
    the graph's buffers). Returns (the first run's x, samples, wall seconds, process CPU seconds of
    every thread); ``sync`` waits for the device's last kernels before the clock stops."""
    for step in range(depth):
        give(step)
    first, _ = pipe.run()
    give(depth)
    cpu0, start, samples = time.process_time(), time.perf_counter(), 0
    for step in range(1, batches + 1):
        x, _ = pipe.run()  # batch `step`; the graph already works on the next ones
        samples += len(x)
        give(step + depth)
    if sync:
        sync()
    return first, samples, time.perf_counter() - start, time.process_time() - cpu0


def time_feed(feed, *, batches: int, sync=None) -> dict:
    """Samples/s through ``feed``'s graph alone, run as a loader would (:func:`run_ahead`). Also
    the host's share of each batch (the feed's inputs; with DALI's ``feed_input`` of them), and the
    host CPU cores busy meanwhile (process CPU time, every thread, over wall time)."""
    from dalidw.pipeline import build_pipeline, feed_batch

    for index in range(len(feed)):  # every region decoded (and resident on the device)
        feed.inputs(0, index)
    pipe = build_pipeline(feed.spec, prefetch_queue_depth=PREFETCH)
    pipe.build()
    host, handed = [], []

    def hand(step: int) -> None:
        """Feed the inputs of the step-th batch after the warm-up epoch, timing the host's part."""
        t0 = time.perf_counter()
        inputs = feed.inputs(*after_warm_up(feed, step))
        t1 = time.perf_counter()
        feed_batch(pipe, inputs)
        host.append(t1 - t0)
        handed.append(time.perf_counter() - t0)

    _, samples, wall, cpu = run_ahead(pipe, hand, batches=batches, depth=PREFETCH, sync=sync)
    return {"samples_per_s": samples / wall, "host_ms_per_batch": 1000 * float(np.median(host)),
            "host_ms_per_batch_with_feed_input": 1000 * float(np.median(handed)),
            "host_cores_busy": cpu / wall, "cpu_s_per_1000_samples": 1000 * cpu / samples, "batches": batches}


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


def resident(feed) -> tuple[np.ndarray, np.ndarray]:
    """The peers' data: every region stack of ``feed`` in one uint8 array (R, T, H, W, C), and the
    slot in it of each tile's region."""
    regions = np.unique(feed.regions)
    host = feed.store.stacks(regions)
    return np.stack([host[r] for r in regions]), np.searchsorted(regions, feed.regions)


def time_peer(feed, cut, to_numpy, *, batches: int, sync=None) -> dict:
    """Samples/s of a peer: ``cut(positions, box)`` gives the batch x of the tiles at ``positions``
    with their boxes (y, x, h, w), for the same batches as ``feed``'s; ``to_numpy`` brings one to
    the host. Also its largest difference from ``feed``'s own first batch, and host cores busy."""

    def batch(step: int):
        epoch, index = after_warm_up(feed, step)
        return cut(feed.order.positions(epoch, index), feed.inputs(epoch, index, names=("box",))["box"])

    expected, _ = feed.run(feed.inputs(*after_warm_up(feed, 0)))
    diff = float(np.max(np.abs(to_numpy(batch(0)) - expected)))
    batch(1)
    if sync:
        sync()
    cpu0, start, samples = time.process_time(), time.perf_counter(), 0
    for step in range(batches):
        samples += len(batch(step))
    if sync:
        sync()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    return {"samples_per_s": samples / wall, "max_abs_diff_vs_dalidw": diff, "host_cores_busy": cpu / wall,
            "batches": batches}


def time_gather(feed, xp, *, batches: int, sync=None) -> dict:
    """:func:`time_peer` of :func:`gather_resize` with every region resident in one array (on the
    GPU: CuPy)."""
    stacks, slot = resident(feed)
    stacks, gain = xp.asarray(stacks), float(feed.spec.gain[0])

    def cut(positions, box):
        return gather_resize(xp, stacks, slot[positions], box, feed.spec.dim, gain)

    return time_peer(feed, cut, lambda x: x.get() if hasattr(x, "get") else x, batches=batches, sync=sync)


def time_roi_align(feed, *, batches: int) -> dict:
    """:func:`time_peer` of torchvision's ``roi_align`` (aligned, one sample per bin: bilinear with
    pixel centres at +0.5, but reading past a box's edge into its region) on every region resident
    on the GPU as float32 planes, output laid out as dalidw's (B, T, H, W, C)."""
    import torch
    from torchvision.ops import roi_align

    stacks, slot = resident(feed)
    stacks = torch.from_numpy(stacks).cuda()
    count, frames, height, width, channels = stacks.shape
    planes = stacks.permute(0, 1, 4, 2, 3).reshape(count * frames, channels, height, width).float()
    gain, (oh, ow) = float(feed.spec.gain[0]), feed.spec.dim
    steps = torch.arange(frames, device="cuda")

    def cut(positions, box):
        box = torch.from_numpy(box).cuda().float()
        r = torch.from_numpy(slot[positions]).cuda()
        index_of = (r[:, None] * frames + steps[None]).reshape(-1).float()
        y, x, h, w = (box[:, k].repeat_interleave(frames) for k in range(4))
        rois = torch.stack([index_of, x, y, x + w, y + h], dim=1)
        out = roi_align(planes, rois, output_size=(oh, ow), spatial_scale=1.0, sampling_ratio=1, aligned=True)
        return (out.view(len(positions), frames, channels, oh, ow).permute(0, 1, 3, 4, 2) * gain).contiguous()

    return time_peer(feed, cut, lambda x: x.cpu().numpy(), batches=batches, sync=torch.cuda.synchronize)


def time_graph(device: str, scratch: str, *, batches: int) -> dict:
    """The speed check, all rows on this machine in this run: dalidw's "regions" graph (regions
    resident on ``device``, DALI cuts the crops), its "crops" graph (crops cut on the host, as
    ``dataset()`` feeds it), on a GPU also the CPU loader's graph and two peers written without
    DALI on regions resident on the GPU (CuPy array ops; torchvision's roi_align where installed).
    Without a GPU the peer is the same array ops in NumPy."""
    make = speed_loader(device, scratch)
    loader = make(device)
    feed, sync, xp = device_feed(loader, loader, device), None, np
    if device == "gpu":
        import cupy as cp

        sync, xp = cp.cuda.runtime.deviceSynchronize, cp
    h, w = feed.box()
    out: dict = {"setup": {"batch": feed.spec.batch_size, "frames": feed.spec.frames, "box": [h, w],
                           "output": [*feed.spec.dim, feed.spec.channels], "prefetch_queue_depth": PREFETCH,
                           "host_cores": os.cpu_count(), "regions": int(len(np.unique(feed.regions)))}}
    rows = {"dalidw regions graph": lambda: time_feed(feed, batches=batches, sync=sync),
            "dalidw crops graph": lambda: time_feed(loader.feed.replace(source="crops", device_store=None),
                                                    batches=max(3, batches // 4), sync=sync)}
    if device == "gpu":
        rows["dalidw crops graph, device cpu"] = lambda: time_feed(make("cpu").feed, batches=max(3, batches // 10))
    rows["peer: array ops, regions resident"] = lambda: time_gather(feed, xp, batches=batches, sync=sync)
    if device == "gpu":
        rows["peer: torchvision roi_align, regions resident"] = lambda: time_roi_align(feed, batches=batches)
    for name, row in rows.items():
        out[name] = guarded(row)
        if name == "dalidw regions graph" and device == "gpu":
            free, total = xp.cuda.runtime.memGetInfo()
            out["device_memory_used_mib"] = (total - free) / 2**20
            out["device_regions_resident"] = len(loader.feed.device_store.cache)
    return out


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
        summary["versions"] = versions()
    else:
        summary["skipped"] = "no GPU that DALI sees: nothing measured (run with --self-test to check on the CPU)"
        return report(summary, args.out, ok=True)
    summary["device"] = device
    sections = {
        "placement": lambda: check_placement(device),
        "parity": lambda: check_parity(device, scratch),
        "tiff_variants": lambda: check_variants(device, scratch),
        "graph_speed": lambda: time_graph(device, scratch, batches=args.batches or (200 if device == "gpu" else 10)),
        "tensorflow": (lambda: check_tensorflow(scratch)) if device == "gpu"
        else (lambda: {"skipped": "self-test on the CPU"}),
    }
    summary["seconds"] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, section in sections.items():
            start = time.perf_counter()
            summary[name] = guarded(section)
            summary["seconds"][name] = round(time.perf_counter() - start, 1)
            print(f"gpu_check: {name} done in {summary['seconds'][name]} s", file=sys.stderr, flush=True)
            if args.out:  # what has been measured so far survives a later crash or time-out
                write(summary, args.out)
    return report(summary, args.out, ok=passed(summary))


def passed(summary: dict) -> bool:
    """Whether every check of ``summary`` passed: placement, every parity setup, every TIFF variant
    written, the TensorFlow part where it ran, and every speed row (a section that raised has
    {"ok": False} at its top)."""
    parity, variants, speed = summary["parity"], summary["tiff_variants"], summary["graph_speed"]
    sections_ran = all(summary[name].get("ok", True) for name in ("parity", "tiff_variants", "graph_speed"))
    return bool(sections_ran and summary["placement"].get("ok", False) and summary["tensorflow"].get("ok", True)
                and all(r.get("ok", False) for r in parity.values() if isinstance(r, dict))
                and all(r.get("ok", False) for r in variants.values() if isinstance(r, dict) and "skipped" not in r)
                and all(r.get("ok", True) for r in speed.values() if isinstance(r, dict)))


def versions() -> dict:
    """The versions of the packages the check ran with (None where one is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("nvidia-dali-cuda130", "nvidia-dali-cuda120", "cupy-cuda13x", "cupy-cuda12x", "numpy", "pandas",
                 "tifffile", "torch", "torchvision", "tensorflow"):
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
