"""Tiny generated TIFF datasets, an independent numpy reference, and GPU skipping."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import tifffile

# On a GPU machine the tests share the GPU between TensorFlow, JAX, DALI and CuPy in one process:
# neither framework may take the GPU's memory up front (set before either starts).
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# Keras's default backend is TensorFlow; where only JAX is installed (a GPU machine without
# TensorFlow), Keras runs on JAX
if importlib.util.find_spec("tensorflow") is None:
    os.environ.setdefault("KERAS_BACKEND", "jax")

YEARS = [2016, 2017, 2018]

#: TIFF layouts exercised by the tests: tifffile write options.
LAYOUTS = {
    "raw": {},
    "deflate": {"compression": "zlib", "rowsperstrip": 1 << 30},
    "tiled": {"compression": "zlib", "tile": (64, 64)},
    "lzw": {"compression": "lzw"},
}


def pytest_collection_modifyitems(config, items):
    from dalidw.devices import gpu_count

    if gpu_count() > 0:
        return
    skip = pytest.mark.skip(reason="no GPU that DALI sees")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@dataclass
class Dataset:
    """A generated dataset: images on disk, their pixels in memory, and a tiles table."""

    image_dir: str
    images: dict  # (year, region_id) -> (H, W, C) array as written
    table: pd.DataFrame  # long format


def smooth_image(rng: np.random.Generator, height: int, width: int, bands: int, dtype: str,
                 classes: int = 0) -> np.ndarray:
    """Random but locally smooth pixels (so compression and resizing have something to do);
    with ``classes``, a class map of ids 0..classes-1 in patches."""
    coarse = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, bands)).astype(np.float64)
    up = np.kron(coarse, np.ones((8, 8, 1)))[:height, :width]
    if classes:
        return (up * classes // 256).astype(dtype)
    image = (up + rng.normal(0, 12, up.shape)).clip(0, 255)
    if dtype == "uint16":
        return (image * 257).astype(np.uint16)
    if dtype == "int16":
        return ((image - 128) * 100).astype(np.int16)
    if dtype == "float32":
        return (image / 255).astype(np.float32)
    return image.astype(np.uint8)


def make_dataset(root, *, layout: str = "tiled", regions: int = 2, size=(96, 112), bands: int = 3,
                 dtype: str = "uint8", tiles_per_region: int = 7, years=YEARS, seed: int = 0,
                 planar: bool = False, classes: int = 0, extratags=(), tile_size=None) -> Dataset:
    """Region images per year, and tiles of varied sizes at random places, in long format.
    ``planar`` writes bands planar-separate; ``classes`` writes class maps of that many ids;
    ``tile_size`` = (h, w) gives every tile that size (a grid-like table)."""
    rng = np.random.default_rng(seed)
    image_dir = os.path.join(str(root), "Images")
    images = {}
    rows = []
    tile_id = 500
    for r in range(regions):
        region_id = 10 + r
        for year in years:
            image = smooth_image(rng, size[0], size[1], bands, dtype, classes)
            images[year, region_id] = image
            os.makedirs(os.path.join(image_dir, str(year)), exist_ok=True)
            if bands == 1:
                data, options = image[..., 0], {"photometric": "minisblack"}
            elif planar:
                data, options = np.moveaxis(image, -1, 0), {"photometric": "minisblack", "planarconfig": "separate"}
            else:
                data = image
                options = {"photometric": "rgb" if bands == 3 else "minisblack", "planarconfig": "contig"}
            tifffile.imwrite(os.path.join(image_dir, str(year), f"{region_id}.tif"), data,
                             extratags=list(extratags), **options, **LAYOUTS[layout])
        for _ in range(tiles_per_region):
            w, h = rng.integers(9, 50), rng.integers(9, 50)
            if tile_size is not None:
                h, w = tile_size
            x0, y0 = rng.integers(0, size[1] - w + 1), rng.integers(0, size[0] - h + 1)
            box = (int(x0), int(y0), int(x0 + w), int(y0 + h))
            targets = rng.uniform(0, 1, len(years))
            for t, year in enumerate(years):
                rows.append({"tile_id": tile_id, "region_id": region_id, "label_id": year,
                             "target": targets[t], "target2": -targets[t], "region_coordinates": str(box)})
            tile_id += 1
    table = pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    return Dataset(image_dir=image_dir, images=images, table=table)


@pytest.fixture
def dataset(tmp_path) -> Dataset:
    return make_dataset(tmp_path)


# -- the independent reference -----------------------------------------------------------------

def _weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of linear resampling with pixel centres at i + 0.5, clamped at the
    edges; when shrinking, a triangle filter as wide as the scale (antialiasing)."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    weights = np.zeros((n_out, n_in))
    for o in range(n_out):
        centre = (o + 0.5) * scale
        for i in range(int(np.floor(centre - support)), int(np.ceil(centre + support)) + 1):
            w = 1.0 - abs(i + 0.5 - centre) / support
            if w > 0:
                weights[o, min(max(i, 0), n_in - 1)] += w
        weights[o] /= weights[o].sum()
    return weights


def reference_resize(image: np.ndarray, dim) -> np.ndarray:
    """(h, w, C) -> float64 (H, W, C)."""
    wy, wx = _weights(image.shape[0], dim[0]), _weights(image.shape[1], dim[1])
    return np.einsum("oh,hwc,pw->opc", wy, image.astype(np.float64), wx)


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, rounded as PIL's "L" conversion does."""
    value = rgb[..., 0] * 299 + rgb[..., 1] * 587 + rgb[..., 2] * 114
    return ((value + 500) // 1000).astype(rgb.dtype)[..., None]


def nearest_resize(image: np.ndarray, dim) -> np.ndarray:
    """(h, w, C) -> (H, W, C) by nearest neighbour: output pixel o takes input floor((o + 0.5) * h / H),
    in integers (exact where a centre falls on a pixel edge)."""
    rows = (2 * np.arange(dim[0]) + 1) * image.shape[0] // (2 * dim[0])
    cols = (2 * np.arange(dim[1]) + 1) * image.shape[1] // (2 * dim[1])
    return image[rows][:, cols]


def tile_crops(ds: Dataset, tile_id, years) -> list[np.ndarray]:
    """The tile's (h, w, bands) crop of each year, by numpy slicing of the pixels as written."""
    rows = ds.table[(ds.table.tile_id == tile_id) & (ds.table.label_id == years[-1])]
    xmin, ymin, xmax, ymax = (int(v) for v in rows.region_coordinates.iloc[0].strip("()").split(","))
    region = int(rows.region_id.iloc[0])
    return [ds.images[year, region][ymin:ymax, xmin:xmax] for year in years]


def reference_sequence(ds: Dataset, tile_id, years, dim, *, n_channels=3, scale=1 / 255) -> np.ndarray:
    """float64 (T, H, W, C): the tile's crops, by numpy slicing of the pixels as written."""
    rows = ds.table[(ds.table.tile_id == tile_id) & (ds.table.label_id == years[-1])]
    xmin, ymin, xmax, ymax = (int(v) for v in rows.region_coordinates.iloc[0].strip("()").split(","))
    region = int(rows.region_id.iloc[0])
    frames = []
    for year in years:
        crop = ds.images[year, region][ymin:ymax, xmin:xmax].astype(np.int64)
        if n_channels == 1 and crop.shape[-1] == 3:
            crop = luma(crop)
        frames.append(reference_resize(crop, dim) * scale)
    return np.stack(frames)


def reference_target(ds: Dataset, tile_id, years, column="target") -> float:
    rows = ds.table[(ds.table.tile_id == tile_id) & (ds.table.label_id == years[-1])]
    return float(rows[column].iloc[0])
