"""Synthetic Dynamic World-like data: region TIFFs per year and a long-format tiles table.

Land cover comes in spatially coherent patches; built-up land grows outwards from a few
town centres year after year, so a tile's urbanization rate in the last year is learnable
from its sequence of frames.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import OptionError

#: Dynamic World's class colours (water, trees, grass, flooded vegetation, crops,
#: shrub and scrub, built, bare, snow and ice), RGB.
PALETTE = np.array([
    [65, 155, 223], [57, 125, 73], [136, 176, 83], [122, 135, 198], [228, 150, 53],
    [223, 195, 90], [196, 40, 27], [165, 155, 143], [179, 159, 225]], dtype=np.uint8)
BUILT = 6

#: TIFF layouts: tifffile write options of each.
LAYOUTS: dict[str, dict] = {
    "raw": {},
    "deflate": {"compression": "zlib", "rowsperstrip": 1 << 30},
    "tiled": {"compression": "zlib", "tile": (256, 256)},
    "lzw": {"compression": "lzw"},
}


@dataclass(frozen=True)
class SynthSpec:
    """What to generate.

    Attributes:
        regions: number of region images per year.
        height: region image height, pixels.
        width: region image width, pixels.
        tile: (height, width) of the tiles cut on a grid, pixels.
        years: the labels, one image per region and year.
        layout: one of LAYOUTS.
        bands: for "rgb", 3 (RGB) or 1 (gray); for "sentinel", 4 to 13 reflectance bands.
        dtype: for "rgb", "uint8" or "uint16" (the uint8 values times 257).
        seed: everything follows from it.
        kind: what the images hold, as Dynamic World and Sentinel-2 exports do: "rgb" (the class
            colours), "label" (one uint8 band of class ids 0-8), "probability" (nine float32 class
            probability bands that sum to 1), "sentinel" (uint16 reflectance, 0-10000).
        planar: write bands planar-separate (one plane per band) instead of interleaved.
        class_maps: also write each image's class map (uint8 class ids, georeferenced) to
            ``ClassMaps/{year}/{region_id}.tif``, as Dynamic World's label band, to compute targets from.
    """

    regions: int = 4
    height: int = 256
    width: int = 256
    tile: tuple[int, int] = (40, 45)
    years: Sequence[int] = tuple(range(2016, 2023))
    layout: str = "tiled"
    bands: int = 3
    dtype: str = "uint8"
    seed: int = 0
    kind: str = "rgb"
    planar: bool = False
    class_maps: bool = False


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Gaussian-filtered white noise with features of about ``scale`` pixels, in [0, 1]."""
    noise = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    kernel = np.exp(-2 * (np.pi * scale) ** 2 * (fx ** 2 + fy ** 2))
    field = np.fft.irfft2(np.fft.rfft2(noise) * kernel, s=shape)
    field -= field.min()
    return field / max(field.max(), 1e-12)


def land_cover(spec: SynthSpec, region: int) -> np.ndarray:
    """Class maps of one region, uint8 (years, height, width), Dynamic World class ids 0-8."""
    rng = np.random.default_rng([spec.seed, region])
    shape = (spec.height, spec.width)
    base = np.digitize(_smooth_noise(rng, shape, 12.0), [0.25, 0.45, 0.55, 0.7, 0.85, 0.95])
    base = np.array([0, 1, 2, 4, 5, 3, 7], dtype=np.uint8)[base]
    yy, xx = np.mgrid[0 : spec.height, 0 : spec.width]
    towns = rng.integers(2, 5)
    dist = np.full(shape, np.inf)
    for _ in range(towns):
        cy, cx = rng.uniform(0, spec.height), rng.uniform(0, spec.width)
        dist = np.minimum(dist, np.hypot(yy - cy, xx - cx))
    edge = _smooth_noise(rng, shape, 6.0) * 0.35 * min(shape)
    growth = rng.uniform(0.04, 0.09) * min(shape)
    start = rng.uniform(0.02, 0.12) * min(shape)
    maps = np.empty((len(spec.years),) + shape, dtype=np.uint8)
    for t in range(len(spec.years)):
        maps[t] = np.where(dist + edge * 0.5 < start + growth * t, BUILT, base)
    return maps


KINDS = ("rgb", "label", "probability", "sentinel")

#: Made-up but fixed surface reflectance of each class in 13 Sentinel-2 bands, 0-10000.
_REFLECTANCE = np.random.default_rng(2016).integers(300, 6000, (len(PALETTE), 13))

#: GeoTIFF tags as exports carry them (pixel scale, tie point, a small key directory).
GEOTIFF_TAGS = [
    (33550, "d", 3, (10.0, 10.0, 0.0), False),
    (33922, "d", 6, (0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0), False),
    (34735, "H", 8, (1, 1, 0, 1, 1024, 0, 1, 1), False),
]
#: GDAL's nodata tag as Sentinel-2 exports carry it (reflectance 0 marks no data); class maps,
#: where 0 is a class (water), carry none.
SENTINEL_NODATA_TAG = (42113, "s", 0, "0", False)


def render(classes: np.ndarray, spec: SynthSpec, rng: np.random.Generator) -> np.ndarray:
    """The image of a class map: (H, W, bands) as ``spec.kind`` says."""
    if spec.kind == "label":
        return classes[..., None].copy()
    if spec.kind == "probability":
        noise = rng.normal(0, 0.5, (*classes.shape, len(PALETTE)))
        logits = np.eye(len(PALETTE), dtype=np.float32)[classes] * 3 + noise
        odds = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return (odds / odds.sum(axis=-1, keepdims=True)).astype(np.float32)
    if spec.kind == "sentinel":
        values = _REFLECTANCE[classes][..., : spec.bands] + rng.normal(0, 150, classes.shape + (spec.bands,))
        return values.clip(0, 10000).astype(np.uint16)
    rgb = PALETTE[classes].astype(np.int16) + rng.integers(-6, 7, classes.shape + (3,), dtype=np.int16)
    rgb = rgb.clip(0, 255).astype(np.uint8)
    if spec.bands == 1:
        rgb = ((rgb[..., 0] * 299 + rgb[..., 1] * 587 + rgb[..., 2] * 114 + 500) // 1000).astype(np.uint8)[..., None]
    if spec.dtype == "uint16":
        return rgb.astype(np.uint16) * 257
    return rgb


def _tiff_options(image: np.ndarray, spec: SynthSpec) -> dict:
    """tifffile.imwrite arguments for (H, W, bands) ``image``."""
    options = dict(LAYOUTS[spec.layout])
    bands = image.shape[-1]
    if bands == 1:
        options.update(data=image[..., 0], photometric="minisblack")
    elif spec.planar:
        options.update(data=np.moveaxis(image, -1, 0), photometric="minisblack", planarconfig="separate")
    else:
        photometric = "rgb" if spec.kind == "rgb" and bands == 3 else "minisblack"
        options.update(data=image, photometric=photometric, planarconfig="contig")
    if spec.kind != "rgb":
        options["extratags"] = GEOTIFF_TAGS + ([SENTINEL_NODATA_TAG] if spec.kind == "sentinel" else [])
    return options


def write_dataset(out_dir: str | os.PathLike, spec: SynthSpec = SynthSpec(), *, progress: bool = False) -> pd.DataFrame:
    """Write ``out_dir/Images/{year}/{region_id}.tif`` and ``out_dir/tiles.csv`` (and ``ClassMaps/``
    with ``spec.class_maps``).

    Returns:
        the tiles table (long format: tile_id, region_id, label_id, target, region_coordinates),
        where target is the tile's built-up fraction in that row's year.
    """
    import tifffile

    if spec.layout not in LAYOUTS:
        raise OptionError(f"Expected `layout` to be one of {sorted(LAYOUTS)}. Received: layout={spec.layout!r}")
    if spec.kind not in KINDS:
        raise OptionError(f"Expected `kind` to be one of {list(KINDS)}. Received: kind={spec.kind!r}")
    if spec.kind == "sentinel" and not 4 <= spec.bands <= 13:
        raise OptionError(f"Expected 4 to 13 bands for kind='sentinel'. Received: bands={spec.bands}")
    if spec.kind == "rgb" and spec.bands not in (1, 3):
        raise OptionError(f"Expected 1 or 3 bands for kind='rgb'. Received: bands={spec.bands}")
    tile_h, tile_w = spec.tile
    if not (0 < tile_h <= spec.height and 0 < tile_w <= spec.width):
        raise OptionError(f"Expected the tile {spec.tile} to fit in a {spec.height}x{spec.width} region")
    rows = []
    tile_id = 0
    from tqdm.auto import tqdm

    for r in tqdm(range(spec.regions), desc="dalidw: writing regions", unit="region", disable=not progress,
                  leave=False):
        region_id = 1000 + r
        maps = land_cover(spec, r)
        rng = np.random.default_rng([spec.seed, r, 1])
        for t, year in enumerate(spec.years):
            folder = os.path.join(out_dir, "Images", str(year))
            os.makedirs(folder, exist_ok=True)
            image = render(maps[t], spec, rng)
            tifffile.imwrite(os.path.join(folder, f"{region_id}.tif"), **_tiff_options(image, spec))
            if spec.class_maps:
                maps_folder = os.path.join(out_dir, "ClassMaps", str(year))
                os.makedirs(maps_folder, exist_ok=True)
                tifffile.imwrite(os.path.join(maps_folder, f"{region_id}.tif"), maps[t], compression="zlib",
                                 tile=(256, 256), photometric="minisblack", extratags=GEOTIFF_TAGS)
        for y0 in range(0, spec.height - tile_h + 1, tile_h):
            for x0 in range(0, spec.width - tile_w + 1, tile_w):
                box = (x0, y0, x0 + tile_w, y0 + tile_h)
                built = (maps[:, y0 : y0 + tile_h, x0 : x0 + tile_w] == BUILT).mean(axis=(1, 2))
                for t, year in enumerate(spec.years):
                    rows.append((tile_id, region_id, year, round(float(built[t]), 6), str(box)))
                tile_id += 1
    table = pd.DataFrame(rows, columns=["tile_id", "region_id", "label_id", "target", "region_coordinates"])
    table.to_csv(os.path.join(out_dir, "tiles.csv"), index=False)
    return table
