"""How fast `dalidw tiles` builds the tiles table, against how fast the same images decode.

Generates Dynamic World-like class maps (uint8 class ids, tiled deflate TIFFs, one per region and
year), then runs each measurement in its own process, so that its peak memory is its own:

- decode-tifffile: every image decoded once by tifffile (the decoder `dalidw tiles` uses);
- decode-dali: every image decoded once by the loader's DALI CPU decoder;
- tiles: `build_tiles` (grid, fraction:6 targets, a blocks:8 split), the whole table in memory, and,
  timed apart, writing it as CSV;
- tiles-stream: `write_tiles`, the same table written region by region as `dalidw tiles` does;
- naive-loop: the Python loop over tiles a table is often built with (one numpy reduction per tile
  and label), on the first region only;
- imports: the interpreter with numpy, pandas and dalidw imported, the memory every row starts from.

    python bench/tiles.py --quick      # 4 regions of 1024x1024, 7 years
    python bench/tiles.py              # 20 regions of 4096x4096, 7 years (docs/performance.md's figures)

Results go to bench/results/tiles-<mode>.json; the table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

MODES = {
    "quick": dict(regions=4, size=1024, years=7, tile=32),
    "full": dict(regions=20, size=4096, years=7, tile=32),
}
FIRST_YEAR = 2016
HERE = os.path.dirname(os.path.abspath(__file__))


def make_data(root: str, mode: dict) -> str:
    """Write the class maps (and the synthetic table, the targets' reference) once into ``root``."""
    from dalidw.synth import SynthSpec, write_dataset

    if not os.path.isfile(os.path.join(root, "tiles.csv")):
        spec = SynthSpec(regions=mode["regions"], height=mode["size"], width=mode["size"],
                         tile=(mode["tile"], mode["tile"]), years=list(range(FIRST_YEAR, FIRST_YEAR + mode["years"])),
                         layout="tiled", kind="label", seed=7)
        write_dataset(root, spec, progress=True)
    return os.path.join(root, "Images")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def image_paths(image_dir: str) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, files in os.walk(image_dir) for f in files if f.endswith(".tif"))


def run_one(name: str, image_dir: str, tile: int, out: str) -> dict:
    """One measurement, in this process."""
    import numpy as np

    from dalidw.decode import RegionDecoder, read_with_tifffile
    from dalidw.tiles import build_tiles, write_table, write_tiles

    paths = image_paths(image_dir)
    result: dict = {"images": len(paths)}
    start = time.perf_counter()
    if name == "decode-tifffile":
        pixels = sum(read_with_tifffile(p).size for p in paths)
        result["pixels"] = pixels
    elif name == "decode-dali":
        import tifffile

        decoder = RegionDecoder(dtype=np.dtype("uint8"), device="cpu", device_id=None, max_batch=1)
        pixels = 0
        for path in paths:
            with tifffile.TiffFile(path) as tif:
                shape = tif.pages.first.shape[:2]
            pixels += decoder.decode([path], [shape])[0].size
        result["pixels"] = pixels
    elif name == "tiles":
        table, report = build_tiles(image_dir, tile, targets=["fraction:6"], split="blocks:8")
        result["build_s"] = time.perf_counter() - start
        result["peak_after_build_mib"] = peak_mib()
        result["table_mib"] = float(table.memory_usage(deep=False).sum() / 2**20)
        write_start = time.perf_counter()
        write_table(table, os.path.join(out, "tiles-bench.csv"))
        result["write_s"] = time.perf_counter() - write_start
        result["peak_after_write_mib"] = peak_mib()
        result.update(tiles=report.tiles, grid_tiles=report.grid_tiles, rows=len(table), splits=report.splits,
                      buffer_dropped=report.buffer_dropped)
        reference = _reference_targets(os.path.dirname(image_dir))
        built = table.set_index(["tile_id", "label_id"])["target"].round(6)
        result["targets_match_synthetic_table"] = bool(
            (built.to_numpy() == reference.reindex(built.index).to_numpy()).all())
    elif name == "tiles-stream":
        report = write_tiles(image_dir, tile, os.path.join(out, "tiles-stream.csv"), targets=["fraction:6"],
                             split="blocks:8")
        result.update(tiles=report.tiles)
    elif name == "naive-loop":
        region = sorted(os.listdir(os.path.join(image_dir, str(FIRST_YEAR))))[0]
        maps = [read_with_tifffile(os.path.join(image_dir, label, region))[..., 0]
                for label in sorted(os.listdir(image_dir))]
        result["decode_s"] = time.perf_counter() - start
        loop_start = time.perf_counter()
        rows = []
        height, width = maps[0].shape
        for y in range(0, height - tile + 1, tile):
            for x in range(0, width - tile + 1, tile):
                for label, image in enumerate(maps):
                    rows.append((y, x, label, float((image[y : y + tile, x : x + tile] == 6).mean())))
        result["loop_s"] = time.perf_counter() - loop_start
        result["tiles"] = len(rows) // len(maps)
    elif name != "imports":
        raise ValueError(name)
    result["seconds"] = time.perf_counter() - start
    result["peak_mib"] = peak_mib()
    return result


def _reference_targets(root: str):
    import pandas as pd

    table = pd.read_csv(os.path.join(root, "tiles.csv"))
    return table.set_index(["tile_id", "label_id"])["target"]


def measure(name: str, image_dir: str, tile: int, out: str) -> dict:
    """Run one measurement in a fresh process; returns its result."""
    code = (f"import json, sys; sys.path.insert(0, {HERE!r}); import tiles; "
            f"print('RESULT', json.dumps(tiles.run_one({name!r}, {image_dir!r}, {tile}, {out!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data", help="where the class maps go (default: a temporary folder)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)
    mode_name = "quick" if args.quick else "full"
    mode = MODES[mode_name]
    root = args.data or tempfile.mkdtemp(prefix="dalidw-tiles-bench-")
    os.makedirs(args.out, exist_ok=True)
    started = time.perf_counter()
    image_dir = make_data(root, mode)
    generate_s = time.perf_counter() - started
    rows = {name: measure(name, image_dir, mode["tile"], root)
            for name in ("imports", "decode-tifffile", "decode-dali", "tiles", "tiles-stream", "naive-loop")}
    tiles = rows["tiles"]
    region_label_mib = mode["size"] ** 2 * mode["years"] / 2**20
    summary = {
        "mode": mode_name, **mode, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(), "generate_s": round(generate_s, 1), "rows": rows,
        "tiles_per_s": tiles["tiles"] / tiles["build_s"],
        "build_vs_decode_tifffile": tiles["build_s"] / rows["decode-tifffile"]["seconds"],
        "build_vs_decode_dali": tiles["build_s"] / rows["decode-dali"]["seconds"],
        "naive_tiles_per_s": rows["naive-loop"]["tiles"] / rows["naive-loop"]["loop_s"],
        "one_region_labels_mib": region_label_mib,
        "build_peak_over_imports_mib": tiles["peak_after_build_mib"] - rows["imports"]["peak_mib"],
        "write_peak_over_imports_mib": tiles["peak_after_write_mib"] - rows["imports"]["peak_mib"],
        "stream_peak_over_imports_mib": rows["tiles-stream"]["peak_mib"] - rows["imports"]["peak_mib"],
    }
    path = os.path.join(args.out, f"tiles-{mode_name}.json")
    with open(path, "w") as handle:
        json.dump(summary, handle, indent=2)
    print(f"{mode['regions']} regions of {mode['size']}x{mode['size']} class maps x {mode['years']} years, "
          f"tiles {mode['tile']}x{mode['tile']}")
    print(f"{'row':18} {'seconds':>8} {'peak MiB':>9}")
    for name, row in rows.items():
        print(f"{name:18} {row['seconds']:8.2f} {row['peak_mib']:9.0f}")
    print(f"tiles: {tiles['tiles']} tiles in {tiles['build_s']:.2f} s ({summary['tiles_per_s']:,.0f} tiles/s), "
          f"CSV of {tiles['rows']} rows written in {tiles['write_s']:.2f} s; build / decode: "
          f"{summary['build_vs_decode_tifffile']:.2f}x tifffile, {summary['build_vs_decode_dali']:.2f}x DALI; "
          f"naive loop: {summary['naive_tiles_per_s']:,.0f} tiles/s")
    print(f"peak memory over imports: {summary['build_peak_over_imports_mib']:.0f} MiB building (the table "
          f"itself {tiles['table_mib']:.0f} MiB; one region's labels {region_label_mib:.0f} MiB), "
          f"{summary['write_peak_over_imports_mib']:.0f} MiB once written, "
          f"{summary['stream_peak_over_imports_mib']:.0f} MiB written region by region; "
          f"targets match the synthetic table: {tiles['targets_match_synthetic_table']}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
