"""Up-front checks over the image files and the boxes: TIFF headers only, every problem gathered."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tifffile

from .bands import DTYPE_RANGES, ChannelSpec
from .errors import TIFF_ERRORS, DataError, shown
from .geo import Grid, read_grid
from .index import TileTable, key_text
from .nodata import GDAL_NODATA_TAG, tag_value

#: Photometric interpretations that DALI's decoder converts instead of giving the stored bands.
CONVERTED_PHOTOMETRICS = ("MINISWHITE", "SEPARATED", "CIELAB", "ICCLAB", "ITULAB", "YCBCR")
#: Photometric interpretations whose bands are not red, green and blue (or gray ones).
NOT_RGB_PHOTOMETRICS = ("SEPARATED", "CIELAB", "ICCLAB", "ITULAB", "MINISWHITE")
#: Largest image accepted, in pixels (height x width), checked from the header before any decoding,
#: as Pillow's MAX_IMAGE_PIXELS guards against decompression bombs.
MAX_IMAGE_PIXELS = 1 << 30


@dataclass(frozen=True)
class ImageInfo:
    """What a TIFF header says of its first image: size in pixels, bands, sample type."""

    height: int
    width: int
    channels: int
    dtype: np.dtype
    planar_separate: bool
    tile_shape: tuple[int, int] | None = None
    photometric: str = "MINISBLACK"
    bits: int = 8
    jpeg: bool = False
    nodata: float | None = None

    def slow_path_reason(self) -> str | None:
        """Why DALI's TIFF decoder cannot read this image as stored (so tifffile must), or None.

        DALI converts what tifffile keeps as stored: palette indices to colours, CMYK, CIELAB,
        YCbCr and MinIsWhite to RGB or inverted gray, and packed samples (12-bit, say) to other values.
        """
        if self.photometric == "PALETTE":
            return "palette (colour-map) image: its stored indices are kept, not the colours"
        if self.photometric in CONVERTED_PHOTOMETRICS and not (self.photometric == "YCBCR" and self.jpeg):
            return f"photometric {self.photometric}: its bands are kept as stored"
        if self.bits != 8 * self.dtype.itemsize:
            return f"{self.bits}-bit samples in {self.dtype.name}"
        if self.planar_separate:
            return "planar-separate bands"
        if self.dtype.kind == "i":
            return f"signed {self.dtype.name} samples"
        if self.tile_shape is not None and (self.tile_shape[0] % 16 or self.tile_shape[1] % 16):
            return f"{self.tile_shape[1]}x{self.tile_shape[0]} tiles, not multiples of 16"
        return None

    def size_problem(self, path: str, max_pixels: int = MAX_IMAGE_PIXELS) -> str | None:
        """The problem line of an image larger than ``max_pixels`` (height x width), or None."""
        if self.height * self.width <= max_pixels:
            return None
        return f"{path}: {self.width}x{self.height} pixels (width x height) is more than max_image_pixels={max_pixels}"


@dataclass(frozen=True)
class ImageSet:
    """The images of a dataset, checked: one sample type and band count for all of them.

    Attributes:
        paths: (T, R) path of each label's image of each region, regions in ``region_index`` order.
        heights: int64 (T, R) image heights in pixels.
        widths: int64 (T, R) image widths in pixels.
        region_index: region id -> column in ``paths``.
        dtype: the sample type of every image.
        channels: the band count of every image.
        slow_path: path -> why DALI cannot decode it, for the images a CPU decoder must read.
        nodata: path -> the value of its GDAL_NODATA tag, for the images that carry one.
        root: the real path of ``image_dir`` that every image must resolve inside, or None
            (``allow_outside_links``).
    """

    paths: np.ndarray
    heights: np.ndarray
    widths: np.ndarray
    region_index: dict[str, int]
    dtype: np.dtype
    channels: int
    slow_path: dict[str, str]
    nodata: dict[str, float]
    root: str | None = None


def image_path(image_dir: str | os.PathLike, label: Any, region_id: str, extension: str) -> str:
    """``image_dir/{label}/{region_id}{extension}``."""
    return os.path.join(os.fspath(image_dir), key_text(label), f"{region_id}{extension}")


def link_outside(path: str, root: str) -> str | None:
    """Why ``path`` reads outside the directory ``root`` (a real path) through a symbolic link, or None."""
    real = os.path.realpath(path)
    if os.path.commonpath([real, root]) == root:
        return None
    return (f"{path} is a symbolic link (or lies in a linked folder) that resolves to {real}, outside image_dir "
            f"{root}; pass allow_outside_links=True to read it")


def read_header(path: str) -> ImageInfo:
    """Read the first image's header of a TIFF without decoding it.

    Raises:
        ValueError: the file is not a TIFF that can be read.
    """
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            height, width = int(page.imagelength), int(page.imagewidth)
            channels = int(page.samplesperpixel)
            planar = channels > 1 and int(page.planarconfig) == 2
            dtype = np.dtype(page.dtype) if page.dtype is not None else np.dtype("V")
            tile_shape = (int(page.tilelength), int(page.tilewidth)) if page.is_tiled else None
            photometric = getattr(page.photometric, "name", str(page.photometric))
            bits = int(page.bitspersample)
            jpeg = int(page.compression) in (6, 7)
            tag = page.tags.get(GDAL_NODATA_TAG)
            nodata = tag_value(tag.value if tag is not None else None)
    except TIFF_ERRORS as err:
        raise ValueError(f"not a readable TIFF ({type(err).__name__}: {err})") from None
    return ImageInfo(height, width, channels, dtype, planar, tile_shape, photometric, bits, jpeg, nodata)


def read_grids(paths: Sequence[str]) -> list[Grid | None]:
    """The GeoTIFF grid of each image, None where its tags cannot be read as one."""
    grids: list[Grid | None] = []
    for path in paths:
        try:
            with tifffile.TiffFile(path) as tif:
                grids.append(read_grid(tif.pages.first))
        except TIFF_ERRORS:  # unreadable tags (read_grid raises ValueError): the size problem stands without them
            grids.append(None)
    return grids


def _pixel_size(transform: tuple[float, ...]) -> str:
    """The pixel width and height of a transform ``(a, b, c, d, e, f)`` (see ``geo``), in CRS units:
    "10", or "10x20" where they differ."""
    a, b, _, d, e, _ = transform
    width, height = float(np.hypot(a, d)), float(np.hypot(b, e))
    return f"{width:.12g}" if width == height else f"{width:.12g}x{height:.12g}"


def grid_differences(grids: Sequence[Grid | None]) -> list[str] | None:
    """How the georeferenced grids among ``grids`` differ, e.g. ["pixel size 10 vs 5"]: [] where they
    share CRS, pixel size and origin, None where fewer than two are georeferenced."""
    placed = [(g.epsg, g.transform) for g in grids if g is not None and g.transform is not None]
    if len(placed) < 2:
        return None
    aspects = {
        "CRS": [f"EPSG {epsg}" if epsg is not None else "none named" for epsg, _ in placed],
        "pixel size": [_pixel_size(transform) for _, transform in placed],
        "origin": [f"({transform[2]:.12g}, {transform[5]:.12g})" for _, transform in placed],
    }
    return [f"{aspect} {' vs '.join(dict.fromkeys(values))}" for aspect, values in aspects.items()
            if len(set(values)) > 1]


def mixed_sizes(labels: Sequence[Any], regions: Sequence[str], paths: np.ndarray,
                infos: dict[tuple[int, int], ImageInfo]) -> list[str]:
    """A problem line for each region whose images (those whose header was read) differ in height or
    width across labels, where one pixel box may cut other ground in each. GeoTIFF tags are read only
    for those regions."""
    problems = []
    for j, region in enumerate(regions):
        found = [t for t in range(len(labels)) if (t, j) in infos]
        if len({(infos[t, j].height, infos[t, j].width) for t in found}) < 2:
            continue
        sizes = ", ".join(f"{shown(labels[t])} {infos[t, j].width}x{infos[t, j].height}" for t in found)
        differ = grid_differences(read_grids([paths[t, j] for t in found]))
        if differ is None:
            why = "; the same pixel box may cut other ground in each label"
        elif differ:
            why = f", and their GeoTIFF grids differ: {', '.join(differ)}; the same pixel box cuts other ground in each"
        else:
            why = ", though their GeoTIFF grids share CRS, pixel size and origin (only the extent differs)"
        problems.append(f"region {shown(region)}: images differ in size across labels: {sizes} (width x height)"
                        f"{why}; pass allow_mixed_sizes=True to read each box in each label's own pixels")
    return problems


def check_images(
    table: TileTable,
    labels: Sequence[Any],
    image_dir: str | os.PathLike,
    extension: str,
    channels: ChannelSpec,
    *,
    max_pixels: int = MAX_IMAGE_PIXELS,
    progress: bool | None = None,
    allow_outside_links: bool = False,
    allow_mixed_sizes: bool = False,
) -> ImageSet:
    """Check that every label's image of every region exists, is readable and holds every box.

    Every image must resolve (symbolic links followed) inside ``image_dir`` unless
    ``allow_outside_links``; a region's images must share one size unless ``allow_mixed_sizes``
    (then each box is read in each label's own pixels).

    Raises:
        DataError: listing every missing or unreadable image, every image a symbolic link leads
            out of ``image_dir`` to, every region whose images differ in size, every box outside its
            image, and images whose sample type or bands cannot give the ``channels`` asked for.
    """
    regions = list(dict.fromkeys(table.region_ids.tolist()))
    region_index = {r: j for j, r in enumerate(regions)}
    paths = np.empty((len(labels), len(regions)), dtype=object)
    infos: dict[tuple[int, int], ImageInfo] = {}
    problems: list[str] = []
    if not os.path.isdir(image_dir):
        raise DataError([f"image_dir {shown(os.fspath(image_dir))} is not a directory"], context="no images found")
    root = None if allow_outside_links else os.path.realpath(image_dir)

    jobs = [(t, j) for t in range(len(labels)) for j in range(len(regions))]
    disable = (not progress) if progress is not None else (len(jobs) < 200 or None)
    if disable is not True:
        from tqdm.auto import tqdm

        jobs = tqdm(jobs, desc="dalidw: checking image headers", unit="file", disable=disable, leave=False)
    for t, j in jobs:
        path = image_path(image_dir, labels[t], regions[j], extension)
        paths[t, j] = path
        if not os.path.isfile(path):
            problems.append(f"missing image for label {shown(labels[t])}, region {shown(regions[j])}: {path}")
            continue
        if root is not None and (why := link_outside(path, root)):
            problems.append(f"label {shown(labels[t])}, region {shown(regions[j])}: {why}")
            continue
        try:
            infos[t, j] = read_header(path)
        except ValueError as err:
            problems.append(f"{path}: {err}")

    dtypes: dict[str, str] = {}
    for (t, j), info in infos.items():
        path = paths[t, j]
        dtypes.setdefault(info.dtype.name, path)
        if info.dtype.name not in DTYPE_RANGES:
            problems.append(f"{path}: samples are {info.dtype.name}; supported: {', '.join(DTYPE_RANGES)}")
        problem = channels.problem(path, info.channels, info.dtype)
        if problem:
            problems.append(problem)
        elif channels.bands is None and channels.kept == 3 and info.photometric in NOT_RGB_PHOTOMETRICS:
            problems.append(f"{path}: photometric {info.photometric} is not RGB; n_channels=3 would read its first "
                            "3 bands as red, green and blue: pick the bands with bands=[...]")
        if problem := info.size_problem(path, max_pixels):
            problems.append(problem)
    if len(dtypes) > 1:
        problems.append("images mix sample types: " + ", ".join(f"{d} (e.g. {p})" for d, p in dtypes.items()))
    if not allow_mixed_sizes:
        problems += mixed_sizes(labels, regions, paths, infos)

    box_regions = np.array([region_index[r] for r in table.region_ids], dtype=np.int64)
    unknown = np.iinfo(np.int64).max
    heights = np.full(paths.shape, unknown, dtype=np.int64)
    widths = heights.copy()
    for (t, j), info in infos.items():
        heights[t, j], widths[t, j] = info.height, info.width
    for t in range(len(labels)):
        outside = (table.boxes[:, 2] > widths[t, box_regions]) | (table.boxes[:, 3] > heights[t, box_regions])
        for i in np.flatnonzero(outside):
            j = box_regions[i]
            problems.append(
                f"tile_id {shown(table.tile_ids[i])}: box {tuple(int(v) for v in table.boxes[i])} lies outside "
                f"{paths[t, j]} ({widths[t, j]}x{heights[t, j]} pixels, width x height)"
            )

    if problems:
        raise DataError(problems, context="the images do not match the tiles table")
    any_info = next(iter(infos.values()))
    slow_path = {paths[key]: reason for key, info in infos.items() if (reason := info.slow_path_reason())}
    return ImageSet(paths=paths, heights=heights, widths=widths, region_index=region_index, dtype=any_info.dtype,
                    channels=any_info.channels, slow_path=slow_path,
                    nodata={paths[key]: info.nodata for key, info in infos.items() if info.nodata is not None},
                    root=root)
