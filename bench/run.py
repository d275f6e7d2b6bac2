"""Throughput of dalidw against the loaders people use today, on one generated dataset.

Each loader runs in its own process (so peak memory is its own), after a warm-up batch, over
the same tiles, for two epochs or until its time cap, whichever comes first: samples/s, CPU seconds
per 1000 samples, peak resident memory. Results go to
bench/results/<mode>.json and a PNG bar chart; the table is printed.

    python bench/run.py --quick     # under a minute on 2 cores
    python bench/run.py             # the full run of the README's table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
LOADERS = ["seed-style", "tf.data", "dalidw-cpu", "dalidw-cpu-small-cache", "dalidw-cpu-locality", "dalidw-gpu",
           "floor"]
#: Region images the "small cache" variants may keep decoded: 2 regions' worth of the 7 years.
SMALL_CACHE_REGIONS = 2
MODES = {
    # regions, region size, batch size, warm-up batches, epochs measured, at most this many seconds each loader
    "quick": dict(regions=4, size=512, batch=64, warmup=1, epochs=2, max_seconds=8),
    "full": dict(regions=8, size=1024, batch=256, warmup=1, epochs=2, max_seconds=90),
}
YEARS = list(range(2016, 2023))
DIM = (64, 64)


def make_data(root: str, mode: dict, layout: str) -> str:
    from dalidw.synth import SynthSpec, write_dataset

    if not os.path.isfile(os.path.join(root, "tiles.csv")):
        write_dataset(root, SynthSpec(regions=mode["regions"], height=mode["size"], width=mode["size"],
                                      tile=(40, 45), years=YEARS, layout=layout, seed=1))
    return root


def boxes_of(table: pd.DataFrame) -> pd.DataFrame:
    from dalidw.index import parse_box

    last = table[table.label_id == YEARS[-1]].reset_index(drop=True)
    last["box"] = [parse_box(v) for v in last.region_coordinates]
    return last


# -- the loaders, each a generator of (x, y) batches ---------------------------------------------

def seed_style(root: str, mode: dict):
    """Today's method: per batch, region and label, PIL decodes the whole region image; per tile,
    crop and resize with PIL's default filter, float64 in [0, 1]. Tiles grouped by region."""
    from PIL import Image

    tiles = boxes_of(pd.read_csv(os.path.join(root, "tiles.csv"))).sort_values("region_id", kind="stable")
    batch = mode["batch"]
    while True:
        for start in range(0, len(tiles) - batch + 1, batch):
            part = tiles.iloc[start : start + batch]
            x = np.empty((len(part), len(YEARS), *DIM, 3))
            for t, year in enumerate(YEARS):
                for region, group in part.groupby("region_id", sort=False):
                    image = Image.open(os.path.join(root, "Images", str(year), f"{region}.tif"))
                    image.load()
                    for k, box in zip(np.flatnonzero(part.region_id.to_numpy() == region), group.box):
                        x[k, t] = np.asarray(image.crop(box).resize(DIM[::-1])) / 255.0
            yield x, part.target.to_numpy()


def tf_data(root: str, mode: dict):
    """What a Keras user writes instead: tf.data over tiles, shuffled, a parallel map that reads
    and crops each frame (TensorFlow has no TIFF decoder, so PIL inside numpy_function),
    tf.image.resize, AUTOTUNE and prefetch."""
    import tensorflow as tf
    from PIL import Image

    tiles = boxes_of(pd.read_csv(os.path.join(root, "tiles.csv")))
    boxes = np.array(tiles.box.tolist(), dtype=np.int64)
    regions = tiles.region_id.astype(str).to_numpy()

    def read(i):
        xmin, ymin, xmax, ymax = boxes[i]
        frames = []
        for year in YEARS:
            with Image.open(os.path.join(root, "Images", str(year), f"{regions[i]}.tif")) as image:
                frames.append(np.asarray(image.crop((xmin, ymin, xmax, ymax))))
        return np.stack(frames)

    def load(i, y):
        frames = tf.numpy_function(read, [i], tf.uint8)
        frames.set_shape((len(YEARS), None, None, 3))
        return tf.image.resize(tf.cast(frames, tf.float32) / 255.0, DIM), y

    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(tiles)), tiles.target.to_numpy(np.float32)))
    ds = ds.shuffle(len(tiles), seed=0).repeat().map(load, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(mode["batch"]).prefetch(tf.data.AUTOTUNE)
    yield from ds.as_numpy_iterator()


def dalidw_loader(root: str, mode: dict, device: str, **options):
    """dalidw with its defaults (or ``options``), through loader.dataset() as model.fit consumes it."""
    from dalidw import SequenceDataLoader

    table = pd.read_csv(os.path.join(root, "tiles.csv"))
    loader = SequenceDataLoader(YEARS, table, os.path.join(root, "Images"), dim=DIM, batch_size=mode["batch"],
                                device=device, **options)
    yield from loader.dataset()


def floor(root: str, mode: dict):
    """The limit: decode each region image of the epoch once with DALI, then only DALI's resize
    and normalization of crops already in memory."""
    from dalidw.decode import RegionDecoder
    from dalidw.pipeline import FRAMES, TARGET, GraphSpec, build_pipeline

    tiles = boxes_of(pd.read_csv(os.path.join(root, "tiles.csv")))
    batch = mode["batch"]
    decoder = RegionDecoder(dtype=np.uint8, device="cpu", device_id=None, num_threads=os.cpu_count() or 1)
    spec = GraphSpec(batch_size=batch, dim=DIM, channels=3, frames=len(YEARS), input_dtype=np.uint8,
                     gain=(1 / 255,) * 3, offset=(0.0,) * 3, interpolation="linear", num_classes=0,
                     split_last=False, target_size=1, device="cpu", device_id=None,
                     num_threads=os.cpu_count() or 1)
    pipe = build_pipeline(spec, prefetch_queue_depth=1)
    pipe.build()
    regions = tiles.region_id.unique()
    order = np.random.default_rng(0).permutation(len(tiles))
    while True:
        paths = [os.path.join(root, "Images", str(y), f"{r}.tif") for y in YEARS for r in regions]
        shapes = [(mode["size"], mode["size"])] * len(paths)
        images = dict(zip([(y, r) for y in YEARS for r in regions], decoder.decode(paths, shapes)))
        for start in range(0, len(order) - batch + 1, batch):
            part = tiles.iloc[order[start : start + batch]]
            crops = [np.stack([images[y, r][b[1]:b[3], b[0]:b[2]] for y in YEARS])
                     for r, b in zip(part.region_id, part.box)]
            pipe.feed_input(FRAMES, crops)
            pipe.feed_input(TARGET, [np.array([v], np.float32) for v in part.target])
            x, y = pipe.run()
            yield x.as_array(), y.as_array()


def small_cache(mode: dict) -> int:
    """A cache of SMALL_CACHE_REGIONS regions' images (all years), in bytes: less than the dataset."""
    return SMALL_CACHE_REGIONS * len(YEARS) * mode["size"] * mode["size"] * 3


def measure(name: str, root: str, mode: dict) -> dict:
    """Run one loader in this process; samples/s, CPU s per 1000 samples, peak RSS."""
    if name == "dalidw-gpu":
        from dalidw.devices import gpu_count

        if gpu_count() == 0:
            return {"loader": name, "skipped": "no GPU that DALI sees"}
    makers = {"seed-style": seed_style, "tf.data": tf_data, "floor": floor,
              "dalidw-cpu": lambda r, m: dalidw_loader(r, m, "cpu"),
              "dalidw-cpu-small-cache": lambda r, m: dalidw_loader(r, m, "cpu", cache_bytes=small_cache(m)),
              "dalidw-cpu-locality": lambda r, m: dalidw_loader(r, m, "cpu", cache_bytes=small_cache(m),
                                                                 locality="auto"),
              "dalidw-gpu": lambda r, m: dalidw_loader(r, m, "gpu")}
    batches = makers[name](root, mode)
    for _ in range(mode["warmup"]):
        next(batches)
    n_tiles = pd.read_csv(os.path.join(root, "tiles.csv")).tile_id.nunique()
    wanted = mode["epochs"] * (n_tiles // mode["batch"])
    start, cpu = time.perf_counter(), time.process_time()
    samples = done = 0
    while done < wanted and (done < 2 or time.perf_counter() - start < mode["max_seconds"]):
        x, _ = next(batches)
        assert np.asarray(x).shape[1:] == (len(YEARS), *DIM, 3)
        samples += len(x)
        done += 1
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"loader": name, "samples": samples, "batches": done, "of_batches": wanted, "samples_per_s": samples / wall,
            "cpu_s_per_1000": 1000 * cpu / samples,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from dalidw.devices import gpu_count

    return {"cores": os.cpu_count(), "cpu": cpu, "gpus_seen_by_dali": gpu_count(), "python": platform.python_version()}


def chart(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in results if "samples_per_s" in r]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh([r["loader"] for r in done], [r["samples_per_s"] for r in done], color="#76b900")
    ax.set_xlabel("samples/s (T=7, 64x64x3 float32)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small data, few batches: under a minute")
    parser.add_argument("--layout", default="tiled", choices=["raw", "deflate", "tiled"])
    parser.add_argument("--data", default=None, help="where to generate the dataset (default: a temp dir)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--only", nargs="*", choices=LOADERS, default=LOADERS)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    mode_name = "quick" if args.quick else "full"
    mode = MODES[mode_name]
    scratch = "/tmp" if os.path.isdir("/tmp") else "."
    root = args.data or os.path.join(scratch, f"dalidw-bench-{mode_name}-{args.layout}")

    if args.one:
        print(json.dumps(measure(args.one, root, mode)))
        return 0

    make_data(root, mode, args.layout)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    results = []
    for name in args.only:
        cmd = [sys.executable, __file__, "--one", name, "--data", root, "--layout", args.layout]
        if args.quick:
            cmd.append("--quick")
        run = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if run.returncode != 0:
            results.append({"loader": name, "failed": run.stderr.strip().splitlines()[-1:]})
        else:
            results.append(json.loads(run.stdout.strip().splitlines()[-1]))
        print(f"  {name}: done", file=sys.stderr)

    by_name = {r["loader"]: r for r in results if "samples_per_s" in r}
    print(f"\ndalidw benchmark ({mode_name}): {mode['regions']} regions of {mode['size']}x{mode['size']} "
          f"{args.layout} TIFF, T={len(YEARS)}, {DIM[0]}x{DIM[1]}x3 float32, batch {mode['batch']}")
    print(f"{'loader':<24} {'samples/s':>10} {'CPU s/1000':>11} {'peak MiB':>9} {'x seed':>7} {'x tf.data':>9}")
    for r in results:
        if "samples_per_s" not in r:
            print(f"{r['loader']:<24} {r.get('skipped') or 'failed: ' + ' '.join(r.get('failed', []))}")
            continue
        ratios = [f"{r['samples_per_s'] / by_name[base]['samples_per_s']:.1f}" if base in by_name else "-"
                  for base in ("seed-style", "tf.data")]
        print(f"{r['loader']:<24} {r['samples_per_s']:>10.0f} {r['cpu_s_per_1000']:>11.2f} {r['peak_rss_mib']:>9.0f} "
              f"{ratios[0]:>7} {ratios[1]:>9}")
    os.makedirs(args.out, exist_ok=True)
    report = {"mode": mode_name, "layout": args.layout, "settings": {**mode, "small_cache_bytes": small_cache(mode)},
              "machine": machine(), "results": results,
              "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    json_path = os.path.join(args.out, f"{mode_name}-{args.layout}.json")
    with open(json_path, "w") as f:
        json.dump(report, f, indent=2)
    chart(results, os.path.join(args.out, f"{mode_name}-{args.layout}.png"))
    print(f"machine: {report['machine']}\nwrote {json_path}")
    return 0 if all("failed" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
