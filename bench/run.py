"""Throughput of dalidw against the strongest loaders we can write, on one generated dataset.

Each loader runs in its own process (so peak memory is its own), after warm-up batches, over
the same tiles, for two epochs or until its time cap, whichever comes first; the full run does this
three times, the loaders taking turns, and reports each loader's round of median samples/s. Reported per loader:
samples/s, CPU seconds per 1000 samples (all threads), peak resident memory, how well it mixes
(mean distinct regions per batch, share of the tiles seen in one epoch's worth of samples) and,
for dalidw, the host milliseconds spent preparing one batch's inputs. Results go to
bench/results/<mode>-<layout>.json with a PNG bar chart; the table is printed.

    python bench/run.py --quick            # under a minute on 2 cores
    python bench/run.py                    # the full run of docs/performance.md's table
    python bench/run.py --curves           # cost curves: batch size, T, output size, data vs cache
    python bench/run.py --seed-code PATH   # adds the original SequenceDataLoader.py as a row
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
sys.path.insert(0, HERE)

import baselines  # noqa: E402

LOADERS = ["seed", "seed-style", "tf.data", "tf.data-streaming", "dalidw-cpu", "dalidw-cpu-small-cache",
           "dalidw-cpu-locality", "dalidw-gpu", "floor-write", "floor-dali"]
#: Regions whose images (all years) the "small cache" rows may keep decoded, and the streaming
#: tf.data's interleave cycle: 2 regions of the dataset's 4 or 8.
SMALL_CACHE_REGIONS = 2
MODES = {
    # regions, region size, batch size, warm-up batches, epochs measured, at most this many seconds each loader
    "quick": dict(regions=4, size=512, batch=64, warmup=1, epochs=2, max_seconds=4, years=7, dim=64),
    "full": dict(regions=8, size=1024, batch=256, warmup=2, epochs=2, max_seconds=60, years=7, dim=64),
}
FIRST_YEAR = 2016


def years_of(mode: dict) -> list[int]:
    return list(range(FIRST_YEAR, FIRST_YEAR + mode["years"]))


def make_data(root: str, regions: int, size: int, years: int, layout: str) -> str:
    from dalidw.synth import SynthSpec, write_dataset

    if not os.path.isfile(os.path.join(root, "tiles.csv")):
        write_dataset(root, SynthSpec(regions=regions, height=size, width=size, tile=(40, 45),
                                      years=list(range(FIRST_YEAR, FIRST_YEAR + years)), layout=layout, seed=1))
    return root


def small_cache_regions(mode: dict) -> int:
    return int(mode.get("small_cache_regions", SMALL_CACHE_REGIONS))


def small_cache(mode: dict) -> int:
    """A cache of a few regions' images (all years), in bytes: less than the dataset."""
    return small_cache_regions(mode) * mode["years"] * mode["size"] * mode["size"] * 3


# -- dalidw and the floors, each a generator of (x, y, tile positions) ------------------------------

def dalidw_loader(root: str, mode: dict, device: str, **options):
    """dalidw through loader.dataset(), as model.fit consumes it; the tile positions of each batch
    come from the loader's own order (epoch e, batch i of the stream)."""
    from dalidw import SequenceDataLoader

    table = pd.read_csv(os.path.join(root, "tiles.csv"))
    table = table[table.label_id.isin(years_of(mode))]
    dim = (mode["dim"], mode["dim"])
    loader = SequenceDataLoader(years_of(mode), table, os.path.join(root, "Images"), dim=dim,
                                batch_size=mode["batch"], device=device, **options)
    dalidw_loader.loader = loader
    last = baselines.last_rows(root, years_of(mode))
    row_of = dict(zip(last.tile_id, range(len(last))))
    rows = np.array([row_of[t] for t in loader.table.tile_ids])
    batches = len(loader)
    for step, (x, y) in enumerate(loader.dataset()):
        yield x, y, rows[loader.feed.positions(step // batches, step % batches)]


def host_ms_per_batch(loader) -> dict:
    """Median host milliseconds per batch of what ``dataset()`` does on the host, cache warm, timed
    alone (DALI idle): "inputs", the feed's inputs (on the CPU each tile's frames handed over as
    its own array, no pixel copied; flags and targets); "inputs_and_feed", that plus DALI's
    ``feed_input`` of them; "dense_cut", the inputs with the frames cut into one contiguous host
    buffer instead (what a GPU loader's ``dataset()`` hands DALI's TensorFlow plugin)."""
    from dalidw.pipeline import build_pipeline, feed_batch

    feed = loader.feed
    count = min(len(feed), 12)
    pipe = build_pipeline(feed.spec, prefetch_queue_depth=count)  # room for every batch fed below
    pipe.build()
    buffer = feed.new_frames(feed.spec.batch_size, host=True)
    for index in range(count):  # warm the region cache (a shuffled batch meets every region)
        feed.inputs(0, index)
    times: dict[str, list[float]] = {"inputs": [], "inputs_and_feed": [], "dense_cut": []}
    for index in range(count):
        start = time.perf_counter()
        inputs = feed.inputs(1, index)
        times["inputs"].append(time.perf_counter() - start)
        feed_batch(pipe, inputs)
        times["inputs_and_feed"].append(time.perf_counter() - start)
    for index in range(count):
        start = time.perf_counter()
        feed.inputs(1, index, frames=buffer[: feed.batch_sizes[index]])
        times["dense_cut"].append(time.perf_counter() - start)
    return {name: 1000 * float(np.median(values)) for name, values in times.items()}


def floor_write(root: str, mode: dict):
    """Writing the output alone: fill a preallocated float32 batch."""
    tiles = baselines.last_rows(root, years_of(mode))
    x = np.empty((mode["batch"], mode["years"], mode["dim"], mode["dim"], 3), dtype=np.float32)
    y = np.zeros(mode["batch"], dtype=np.float32)
    order = np.random.default_rng(0).permutation(len(tiles))
    while True:
        for start in range(0, len(order) - mode["batch"] + 1, mode["batch"]):
            x.fill(0.5)
            yield x, y, order[start : start + mode["batch"]]


def floor_dali(root: str, mode: dict):
    """DALI's resize and normalization alone: every tile's crops cut once, before the timing, in
    the order of a shuffled epoch; each batch then feeds a ready (B, T, h, w, C) slice of them to
    the graph dalidw runs (its spec taken from a loader on the same data)."""
    from dalidw.pipeline import FRAMES, TARGET, build_pipeline

    years = years_of(mode)
    tiles = baselines.last_rows(root, years)
    order = np.random.default_rng(0).permutation(len(tiles))
    stacks = {r: baselines.region_stack(root, years, r) for r in tiles.region_id.astype(str).unique()}
    crops = np.stack([stacks[str(tiles.region_id[i])][:, b[1]:b[3], b[0]:b[2]]
                      for i, b in zip(order, tiles.box[order])])
    targets = tiles.target.to_numpy(np.float32)[order]
    batch = mode["batch"]
    table = pd.read_csv(os.path.join(root, "tiles.csv"))
    spec = dalidw_spec(root, mode, table)
    pipe = build_pipeline(spec, prefetch_queue_depth=1)
    pipe.build()
    while True:
        for start in range(0, len(order) - batch + 1, batch):
            pipe.feed_input(FRAMES, crops[start : start + batch])
            pipe.feed_input(TARGET, targets[start : start + batch])
            x, y = pipe.run()
            yield x, y, order[start : start + batch]


def dalidw_spec(root: str, mode: dict, table: pd.DataFrame):
    """The graph spec of a dalidw CPU loader over the benchmark's data (its options as the rows')."""
    from dalidw import SequenceDataLoader

    loader = SequenceDataLoader(years_of(mode), table[table.label_id.isin(years_of(mode))],
                                os.path.join(root, "Images"), dim=(mode["dim"], mode["dim"]),
                                batch_size=mode["batch"], device="cpu")
    return loader.feed.spec


def make_loader(name: str, root: str, mode: dict, seed_code: str | None):
    years, dim, batch = years_of(mode), (mode["dim"], mode["dim"]), mode["batch"]
    makers = {
        "seed": lambda: baselines.seed(root, years, dim, batch, code=seed_code),
        "seed-style": lambda: baselines.seed_style(root, years, dim, batch),
        "tf.data": lambda: baselines.tf_data(root, years, dim, batch),
        "tf.data-streaming": lambda: baselines.tf_data_streaming(root, years, dim, batch,
                                                                 cycle_length=small_cache_regions(mode)),
        "dalidw-cpu": lambda: dalidw_loader(root, mode, "cpu"),
        "dalidw-cpu-small-cache": lambda: dalidw_loader(root, mode, "cpu", cache_bytes=small_cache(mode)),
        "dalidw-cpu-locality": lambda: dalidw_loader(root, mode, "cpu", cache_bytes=small_cache(mode),
                                                     locality="auto"),
        "dalidw-gpu": lambda: dalidw_loader(root, mode, "gpu"),
        "floor-write": lambda: floor_write(root, mode),
        "floor-dali": lambda: floor_dali(root, mode),
    }
    return makers[name]()


def skip_reason(name: str, seed_code: str | None) -> str | None:
    if name == "seed" and not seed_code:
        return "no --seed-code: pass the original SequenceDataLoader.py to run it"
    if name == "dalidw-gpu":
        from dalidw.devices import gpu_count, tensorflow_gpu_count

        if gpu_count() == 0:
            return "no GPU that DALI sees"
        if not tensorflow_gpu_count():
            return "DALI sees a GPU but TensorFlow does not (tensorflow[and-cuda] is needed)"
    return None


def mixing(tiles: list[np.ndarray], region_of: np.ndarray, n_tiles: int) -> dict:
    """Mean distinct regions per batch, and the share of the tiles seen in the first n_tiles samples."""
    if not tiles or any(t is None for t in tiles):
        return {}
    seen, count = set(), 0
    for part in tiles:
        take = part[: max(0, n_tiles - count)]
        seen.update(int(v) for v in take)
        count += len(take)
    out = {"regions_per_batch": float(np.mean([len(np.unique(region_of[t])) for t in tiles]))}
    if count >= n_tiles:
        out["epoch_coverage"] = len(seen) / n_tiles
    return out


def measure(name: str, root: str, mode: dict, seed_code: str | None) -> dict:
    """Run one loader in this process; samples/s, CPU s per 1000 samples, peak RSS, mixing."""
    reason = skip_reason(name, seed_code)
    if reason:
        return {"loader": name, "skipped": reason}
    batches = make_loader(name, root, mode, seed_code)
    for _ in range(mode["warmup"]):
        next(batches)
    last = baselines.last_rows(root, years_of(mode))
    region_of = last.region_id.astype(str).to_numpy()
    n_tiles = len(last)
    wanted = mode["epochs"] * max(1, n_tiles // mode["batch"])
    start, cpu = time.perf_counter(), time.process_time()
    samples = done = 0
    tiles = []
    while done < wanted and (done < 4 or time.perf_counter() - start < mode["max_seconds"]):
        x, _, index = next(batches)
        shape = tuple(x.shape) if isinstance(x.shape, tuple) or hasattr(x.shape, "as_list") else None
        if shape is not None:
            assert shape[1:] == (mode["years"], mode["dim"], mode["dim"], 3), shape
        samples += int(shape[0]) if shape is not None else len(x)
        tiles.append(None if index is None else np.asarray(index))
        done += 1
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    batches.close()  # the loader's graph stops working ahead before the host's share is timed alone
    result = {"loader": name, "samples": samples, "batches": done, "of_batches": wanted,
              "samples_per_s": samples / wall, "cpu_s_per_1000": 1000 * cpu / samples,
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              **mixing(tiles, region_of, n_tiles)}
    if name.startswith("dalidw"):
        result["host_ms_per_batch"] = host_ms_per_batch(dalidw_loader.loader)
    return result


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from dalidw.devices import gpu_count

    return {"cores": os.cpu_count(), "cpu": cpu, "gpus_seen_by_dali": gpu_count(), "python": platform.python_version()}


def run_one(name: str, root: str, mode_name: str, layout: str, seed_code: str | None, overrides: dict) -> dict:
    """``name`` measured in a fresh process."""
    cmd = [sys.executable, __file__, "--one", name, "--data", root, "--layout", layout,
           "--set", json.dumps(overrides)]
    if mode_name == "quick":
        cmd.append("--quick")
    if seed_code:
        cmd += ["--seed-code", seed_code]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        return {"loader": name, "failed": run.stderr.strip().splitlines()[-1:]}
    return json.loads(run.stdout.strip().splitlines()[-1])


def median_round(runs: list[dict]) -> dict:
    """The run of median samples/s among a loader's rounds, with every round's samples/s."""
    done = sorted((r for r in runs if "samples_per_s" in r), key=lambda r: r["samples_per_s"])
    if not done:
        return runs[0]
    median = dict(done[(len(done) - 1) // 2])
    median["rounds_samples_per_s"] = [r["samples_per_s"] for r in done]
    return median


def chart(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in results if "samples_per_s" in r]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.barh([r["loader"] for r in done], [r["samples_per_s"] for r in done], color="#76b900")
    ax.set_xlabel("samples/s (T=7, 64x64x3 float32)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_table(results: list[dict], mode_name: str, mode: dict, layout: str) -> None:
    by_name = {r["loader"]: r for r in results if "samples_per_s" in r}
    print(f"\ndalidw benchmark ({mode_name}): {mode['regions']} regions of {mode['size']}x{mode['size']} {layout} "
          f"TIFF, T={mode['years']}, {mode['dim']}x{mode['dim']}x3 float32, batch {mode['batch']}")
    print(f"{'loader':<24} {'samples/s':>10} {'CPU s/1000':>11} {'peak MiB':>9} {'x tf.data':>9} {'x seed':>7} "
          f"{'regions/batch':>13} {'host ms/batch':>13}")
    for r in results:
        if "samples_per_s" not in r:
            print(f"{r['loader']:<24} {r.get('skipped') or 'failed: ' + ' '.join(r.get('failed', []))}")
            continue
        ratios = [f"{r['samples_per_s'] / by_name[base]['samples_per_s']:.2f}" if base in by_name else "-"
                  for base in ("tf.data", "seed")]
        mix = f"{r['regions_per_batch']:.1f}" if "regions_per_batch" in r else "-"
        host = f"{r['host_ms_per_batch']['inputs_and_feed']:.2f}" if "host_ms_per_batch" in r else "-"
        print(f"{r['loader']:<24} {r['samples_per_s']:>10.0f} {r['cpu_s_per_1000']:>11.2f} {r['peak_rss_mib']:>9.0f} "
              f"{ratios[0]:>9} {ratios[1]:>7} {mix:>13} {host:>13}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small data, few batches: under a minute")
    parser.add_argument("--curves", action="store_true", help="the cost curves instead of the table")
    parser.add_argument("--layout", default="tiled", choices=["raw", "deflate", "tiled"])
    parser.add_argument("--data", default=None, help="where to generate the dataset (default: a temp dir)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--only", nargs="*", choices=LOADERS, default=LOADERS)
    parser.add_argument("--rounds", type=int, default=None,
                        help="runs of each loader; the round of median samples/s is reported (default: 3, quick: 1)")
    parser.add_argument("--seed-code", default=os.environ.get("DALIDW_SEED_CODE"),
                        help="the original SequenceDataLoader.py, for the 'seed' row")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--set", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    mode_name = "quick" if args.quick else "full"
    args.rounds = args.rounds or (1 if args.quick else 3)
    mode = {**MODES[mode_name], **json.loads(args.set)}
    scratch = "/tmp" if os.path.isdir("/tmp") else "."
    root = args.data or os.path.join(scratch, f"dalidw-bench-{mode_name}-{args.layout}")

    if args.one:
        print(json.dumps(measure(args.one, root, mode, args.seed_code)))
        return 0
    if args.curves:
        from curves import run_curves

        return run_curves(mode_name, root, args.layout, args.out, run_one)

    make_data(root, mode["regions"], mode["size"], mode["years"], args.layout)
    rounds: dict[str, list[dict]] = {name: [] for name in args.only}
    for round_index in range(args.rounds):
        for name in args.only:  # loaders take turns, so a slow spell of the machine hits them alike
            rounds[name].append(run_one(name, root, mode_name, args.layout, args.seed_code, {}))
            print(f"  round {round_index + 1}/{args.rounds} {name}: done", file=sys.stderr)
    results = [median_round(runs) for runs in rounds.values()]
    print_table(results, mode_name, mode, args.layout)
    os.makedirs(args.out, exist_ok=True)
    report = {"mode": mode_name, "layout": args.layout, "rounds": args.rounds,
              "settings": {**mode, "small_cache_bytes": small_cache(mode)},
              "seed_patches": [old.strip() + " -> " + new.strip() for old, new in baselines.SEED_PATCHES],
              "machine": machine(), "results": results,
              "environment": {k: os.environ[k] for k in ("TF_CPU_ALLOCATOR_USE_BFC",) if k in os.environ},
              "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    json_path = os.path.join(args.out, f"{mode_name}-{args.layout}.json")
    with open(json_path, "w") as f:
        json.dump(report, f, indent=2)
    chart(results, os.path.join(args.out, f"{mode_name}-{args.layout}.png"))
    print(f"machine: {report['machine']}\nwrote {json_path}")
    return 0 if all("failed" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
