"""The loaders dalidw is measured against, each a generator of (x, y, tiles) batches over one dataset.

``tiles`` is the batch's row numbers in the last label's rows of tiles.csv (None where a loader
cannot say), from which the benchmark derives how well each loader mixes regions.

- ``tf_data``: the pipeline a competent Keras user writes when the data fits in memory: every
  region image decoded once with tifffile into one uint8 tensor, then tile indices -> shuffle ->
  repeat -> batch -> ``tf.image.crop_and_resize`` of the T frames of every tile in the graph
  (/ 255) with AUTOTUNE -> prefetch.
- ``tf_data_streaming``: the same user's pipeline when the data does not fit: regions in a new
  random order every epoch, ``interleave`` over ``cycle_length`` of them, each region's T images
  decoded once per visit with tifffile, its tiles cut by ``crop_and_resize`` in the graph, then a
  shuffle buffer of samples, batch, / 255.
- ``seed``: the original ``SequenceDataLoader`` source file, run as users have it.
- ``seed_style``: the seed's method without its bugs: per batch, region and label PIL decodes the
  whole image; per tile PIL crops and resizes, float64 in [0, 1].
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile

import numpy as np
import pandas as pd

#: The seed's source breaks on current numpy/pandas at one line; the benchmark patches that line alone.
SEED_PATCHES = [
    # a 1-row Series assigned to a float slot: an error since numpy 2 / pandas 2
    ("y[cursor] = self.target.loc[tileID]\n", 'y[cursor] = self.target.loc[tileID, "target"]\n'),
]


def last_rows(root: str, years: list[int]) -> pd.DataFrame:
    """The last label's rows of tiles.csv with a parsed ``box`` (xmin, ymin, xmax, ymax)."""
    from dalidw.index import parse_box

    table = pd.read_csv(os.path.join(root, "tiles.csv"))
    last = table[table.label_id == years[-1]].reset_index(drop=True)
    last["box"] = [parse_box(v) for v in last.region_coordinates]
    return last


def region_stack(root: str, years: list[int], region: str) -> np.ndarray:
    """uint8 (T, H, W, C): the region's images of every year, decoded with tifffile."""
    import tifffile

    return np.stack([tifffile.imread(os.path.join(root, "Images", str(y), f"{region}.tif")) for y in years])


def _tf_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel boxes (xmin, ymin, xmax, ymax), half-open -> crop_and_resize's normalized
    (y1, x1, y2, x2), which name the first and last pixel centres sampled."""
    b = boxes.astype(np.float32)
    return np.stack([b[:, 1] / (height - 1), b[:, 0] / (width - 1),
                     (b[:, 3] - 1) / (height - 1), (b[:, 2] - 1) / (width - 1)], axis=1)


def tf_data(root: str, years: list[int], dim: tuple[int, int], batch: int, *, seed: int = 0):
    """The strong in-memory tf.data pipeline (see the module docstring)."""
    import tensorflow as tf

    tiles = last_rows(root, years)
    regions = sorted(tiles.region_id.astype(str).unique())
    stacks = np.stack([region_stack(root, years, r) for r in regions])  # (R, T, H, W, C) uint8, decoded once
    n_regions, frames, height, width, channels = stacks.shape
    images = tf.constant(stacks.reshape(n_regions * frames, height, width, channels))
    region_of = tiles.region_id.astype(str).map({r: i for i, r in enumerate(regions)}).to_numpy(np.int32)
    boxes = tf.constant(_tf_boxes(np.array(tiles.box.tolist()), height, width))
    region_t = tf.constant(region_of)  # int32 (n_tiles,)
    targets = tf.constant(tiles.target.to_numpy(np.float32))

    def load(index):
        b = tf.shape(index)[0]
        frame_ids = tf.reshape(tf.gather(region_t, index)[:, None] * frames + tf.range(frames)[None, :], [-1])
        frame_boxes = tf.repeat(tf.gather(boxes, index), frames, axis=0)
        crops = tf.image.crop_and_resize(images, frame_boxes, frame_ids, dim)  # float32 (b*T, H, W, C)
        x = tf.reshape(crops, [b, frames, *dim, channels]) / 255.0
        return x, tf.gather(targets, index), index

    ds = tf.data.Dataset.range(len(tiles)).shuffle(len(tiles), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.batch(batch).map(load, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    yield from ds.as_numpy_iterator()


def tf_data_streaming(root: str, years: list[int], dim: tuple[int, int], batch: int, *, cycle_length: int = 2,
                      shuffle_buffer: int = 2048, seed: int = 0):
    """The strong tf.data pipeline for data beyond memory (see the module docstring)."""
    import tensorflow as tf

    tiles = last_rows(root, years)
    regions = sorted(tiles.region_id.astype(str).unique())
    region_of = tiles.region_id.astype(str).map({r: i for i, r in enumerate(regions)}).to_numpy()
    members = [np.flatnonzero(region_of == i).astype(np.int64) for i in range(len(regions))]
    starts = np.concatenate([[0], np.cumsum([len(m) for m in members])]).astype(np.int64)
    flat_members = tf.constant(np.concatenate(members))
    boxes = np.array(tiles.box.tolist())
    targets = tf.constant(tiles.target.to_numpy(np.float32))
    frames = len(years)

    def decode(region_index):
        return region_stack(root, years, regions[int(region_index)])

    def region_tiles(region_index):
        stack = tf.numpy_function(decode, [region_index], tf.uint8)  # the region's T images, once per visit
        stack.set_shape((frames, None, None, 3))
        size = tf.cast(tf.shape(stack)[1:3] - 1, tf.float32)  # (H - 1, W - 1)
        index = flat_members[starts_t[region_index] : starts_t[region_index + 1]]

        def crop(i):  # a few dozen tiles of the region at a time
            b = tf.cast(tf.gather(boxes_t, i), tf.float32)
            box = tf.stack([b[:, 1] / size[0], b[:, 0] / size[1], (b[:, 3] - 1) / size[0], (b[:, 2] - 1) / size[1]], 1)
            n = tf.shape(i)[0]
            x = tf.image.crop_and_resize(stack, tf.repeat(box, frames, axis=0), tf.tile(tf.range(frames), [n]), dim)
            return tf.reshape(x, [n, frames, *dim, 3]), tf.gather(targets, i), i

        return tf.data.Dataset.from_tensor_slices(index).batch(32).map(crop).unbatch()

    boxes_t = tf.constant(boxes)
    starts_t = tf.constant(starts)
    order = tf.data.Dataset.range(len(regions)).shuffle(len(regions), seed=seed, reshuffle_each_iteration=True)
    ds = order.repeat().interleave(region_tiles, cycle_length=cycle_length, block_length=1,
                                   num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    ds = ds.shuffle(shuffle_buffer, seed=seed).batch(batch)
    ds = ds.map(lambda x, y, i: (x / 255.0, y, i), num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    yield from ds.as_numpy_iterator()


def load_seed(path: str):
    """The seed's ``SequenceDataLoader`` class from its source file, with ``SEED_PATCHES`` applied.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a patch no longer applies (the file is another version).
    """
    with open(path) as f:
        source = f.read()
    for old, new in SEED_PATCHES:
        if old not in source:
            raise ValueError(f"{path}: the line to patch is not there: {old.strip()!r}")
        source = source.replace(old, new)
    folder = tempfile.mkdtemp(prefix="seed-")
    patched = os.path.join(folder, "seed_loader.py")
    with open(patched, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("seed_loader", patched)
    module = importlib.util.module_from_spec(spec)
    sys.modules["seed_loader"] = module
    spec.loader.exec_module(module)
    return module.SequenceDataLoader


def seed(root: str, years: list[int], dim: tuple[int, int], batch: int, *, code: str):
    """The seed's own loader, batch after batch, epoch after epoch (its batches hold no tile list
    we can map back cheaply, so ``tiles`` is None)."""
    import contextlib
    import io

    loader_class = load_seed(code)
    table = pd.read_csv(os.path.join(root, "tiles.csv"))
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a line every epoch
        loader = loader_class(years, table, os.path.join(root, "Images"), dim, batch_size=batch, n_channels=3,
                              random_seed=42, shuffle=True, normalize=True)
    while True:
        for index in range(len(loader)):
            x, y = loader[index]
            yield x, y, None
        with contextlib.redirect_stdout(io.StringIO()):
            loader.on_epoch_end()


def seed_style(root: str, years: list[int], dim: tuple[int, int], batch: int):
    """The seed's method without its bugs (see the module docstring). Tiles grouped by region."""
    from PIL import Image

    tiles = last_rows(root, years)
    order = tiles.sort_values("region_id", kind="stable").index.to_numpy()
    while True:
        for start in range(0, len(order) - batch + 1, batch):
            index = order[start : start + batch]
            part = tiles.iloc[index]
            x = np.empty((len(part), len(years), *dim, 3))
            for t, year in enumerate(years):
                for region, group in part.groupby("region_id", sort=False):
                    image = Image.open(os.path.join(root, "Images", str(year), f"{region}.tif"))
                    image.load()
                    for k, box in zip(np.flatnonzero(part.region_id.to_numpy() == region), group.box):
                        x[k, t] = np.asarray(image.crop(box).resize(dim[::-1])) / 255.0
            yield x, part.target.to_numpy(), index
