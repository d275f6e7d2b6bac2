"""Cost curves: samples/s and CPU seconds per 1000 samples as one setting varies, for dalidw and
the strong tf.data pipeline, each point a fresh process (``run.py --curves``).

- batch: batch size 32..512;
- frames: T 3..14;
- size: output frames 32..256 pixels square;
- data: the dataset from 0.25x to 4x the region cache (a cache of 4 regions, 1..16 regions), dalidw
  with and without ``locality``, next to the in-memory and the streaming tf.data.
Results: bench/results/curves-<layout>.json and one PNG per curve.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

CACHE_REGIONS = 4
CURVES = {
    # name: (setting, values, values in quick mode, loaders); "data" uses regions of DATA_SIZE pixels
    "batch": ("batch", [32, 64, 128, 256, 512], [16, 32], ["dalidw-cpu", "tf.data"]),
    "frames": ("years", [3, 5, 7, 10, 14], [3, 5], ["dalidw-cpu", "tf.data"]),
    "size": ("dim", [32, 64, 128, 256], [32, 48], ["dalidw-cpu", "tf.data"]),
    "data": ("regions", [1, 2, 4, 8, 16], [1, 2],
             ["dalidw-cpu-small-cache", "dalidw-cpu-locality", "tf.data", "tf.data-streaming"]),
}
BASE = {"regions": 4, "size": 1024, "batch": 64, "years": 7, "dim": 64, "warmup": 2, "epochs": 2, "max_seconds": 6}
QUICK = {"regions": 2, "size": 256, "batch": 16, "years": 5, "dim": 32, "warmup": 1, "epochs": 1, "max_seconds": 1}
DATA_SIZE = {"full": 512, "quick": 256}


def run_curves(mode_name: str, root: str, layout: str, out: str, run_one: Callable[..., dict]) -> int:
    from run import make_data

    quick = mode_name == "quick"
    base = QUICK if quick else BASE
    results: dict = {"settings": base, "cache_regions": CACHE_REGIONS, "curves": {}}
    failed = False
    for curve, (setting, values, quick_values, loaders) in CURVES.items():
        points = []
        for value in quick_values if quick else values:
            mode = {**base, setting: value}
            years = 14 if setting != "regions" else mode["years"]
            regions = value if setting == "regions" else base["regions"]
            if setting == "regions":
                mode["size"] = DATA_SIZE[mode_name]
            data = make_data(f"{root}-curves-{regions}r-{mode['size']}-{years}y", regions, mode["size"], years, layout)
            if setting == "regions":
                mode["small_cache_regions"] = min(CACHE_REGIONS, 1 if quick else CACHE_REGIONS)
            for name in loaders:
                result = run_one(name, data, mode_name, layout, None, mode)
                failed |= "failed" in result
                points.append({"value": value, **result})
                print(f"  {curve} {setting}={value} {name}: {result.get('samples_per_s', result)}", file=sys.stderr)
        results["curves"][curve] = {"setting": setting, "points": points}
    results["when"] = time.strftime("%Y-%m-%d %H:%M:%S")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"curves-{'quick-' if quick else ''}{layout}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    for curve, data in results["curves"].items():
        plot(curve, data, os.path.join(out, f"curve-{'quick-' if quick else ''}{curve}.png"))
    print(f"wrote {path}")
    return 1 if failed else 0


def plot(curve: str, data: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    loaders = sorted({p["loader"] for p in data["points"]})
    for name in loaders:
        points = [p for p in data["points"] if p["loader"] == name and "samples_per_s" in p]
        xs = [p["value"] for p in points]
        axes[0].plot(xs, [p["samples_per_s"] for p in points], marker="o", label=name)
        axes[1].plot(xs, [p["cpu_s_per_1000"] for p in points], marker="o", label=name)
    label = {"batch": "batch size", "years": "T (frames)", "dim": "output size (pixels)",
             "regions": f"regions (cache holds {CACHE_REGIONS})"}[data["setting"]]
    for ax, title in zip(axes, ["samples/s", "CPU s per 1000 samples"]):
        ax.set_xlabel(label)
        ax.set_title(title)
        ax.set_xscale("log", base=2)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
