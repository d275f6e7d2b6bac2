"""Tile targets: what a target column holds (``fraction:C``, ``change:C``, ``mean:B``) and how it is
computed from a region's images, as sums over the blocks of a tile grid (no loop over tiles)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .decode import read_with_tifffile
from .errors import OptionError
from .nodata import invalid_samples
from .validate import ImageInfo

TARGET_KINDS = ("fraction", "change", "mean")
_TARGET = re.compile(r"^(?:(?P<name>[^=]+)=)?(?P<kind>[a-z]+):(?P<arg>[^:]+)$")


@dataclass(frozen=True)
class TargetSpec:
    """One target column.

    Attributes:
        kind: "fraction" (share of the tile's valid pixels whose class is one of ``classes``, in that
            row's label), "change" (that share in the row's label minus in the first label; the last
            label's row, the one the loader reads, holds last minus first) or "mean" (mean of band
            ``band`` over the tile's valid pixels, in stored units).
        classes: class ids, for "fraction" and "change".
        band: 0-based band, for "mean".
        name: the column name, or "" for the default.
    """

    kind: str
    classes: tuple[int, ...] = ()
    band: int = 0
    name: str = ""

    @classmethod
    def parse(cls, text: str) -> TargetSpec:
        """'fraction:6', 'built=fraction:6,7', 'change:6', 'mean:3' -> a TargetSpec.

        Raises:
            ValueError: another form, or ids/bands that are not whole numbers >= 0.
        """
        match = _TARGET.match(text.strip())
        if match is None or match["kind"] not in TARGET_KINDS:
            raise OptionError("Expected a target like fraction:CLASS[,CLASS...], change:CLASS[,CLASS...] or "
                             f"mean:BAND, optionally NAME=... first. Received: {text!r}")
        items = [t.strip() for t in match["arg"].split(",")]
        if not all(t.isdigit() for t in items):
            raise OptionError(f"Expected whole numbers >= 0 after '{match['kind']}:'. Received: {text!r}")
        numbers = tuple(int(t) for t in items)
        name = (match["name"] or "").strip()
        if match["kind"] == "mean":
            if len(numbers) != 1:
                raise OptionError(f"Expected one band after 'mean:'. Received: {text!r}")
            return cls("mean", band=numbers[0], name=name)
        return cls(match["kind"], classes=tuple(dict.fromkeys(numbers)), name=name)

    @property
    def text(self) -> str:
        """The spec as written, without the name: 'fraction:6,7', 'mean:3'."""
        arg = str(self.band) if self.kind == "mean" else ",".join(map(str, self.classes))
        return f"{self.kind}:{arg}"


def target_problem(spec: TargetSpec, info: ImageInfo) -> str | None:
    """Why ``spec`` cannot be computed from an image with header ``info``, or None."""
    if spec.kind == "mean":
        if spec.band >= info.channels:
            return f"target {spec.text}: band {spec.band} of an image of {info.channels} band(s) (0-based)"
        return None
    if info.channels != 1:
        return (f"target {spec.text}: needs one-band class maps, this image has {info.channels} bands "
                "(give the class maps with --target-images)")
    if info.dtype.kind not in "ui":
        return f"target {spec.text}: needs integer class ids, this image holds {info.dtype.name} samples"
    limits = np.iinfo(info.dtype)
    outside = [c for c in spec.classes if not limits.min <= c <= limits.max]
    if outside:
        return f"target {spec.text}: class id(s) {outside} outside the {info.dtype.name} range of this map"
    return None


def tile_sums(plane: np.ndarray, tile: tuple[int, int], stride: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """float64 or int64 (ny, nx): the sum of ``plane`` (H, W) over each tile of the grid.

    The tile at grid (i, j) covers rows ``i * stride[0]`` to ``+ tile[0]`` and columns likewise.
    """
    wide = np.float64 if plane.dtype.kind == "f" else np.int64
    if plane.dtype == bool:
        plane = plane.view(np.uint8)
    rows = _window_sums(plane, 0, tile[0], stride[0], shape[0], wide)
    return _window_sums(rows, 1, tile[1], stride[1], shape[1], wide)


def _window_sums(a: np.ndarray, axis: int, tile: int, stride: int, count: int, wide: type) -> np.ndarray:
    """Sums of ``count`` windows of ``tile`` along ``axis`` (0 or 1) of 2-D ``a``, ``stride`` apart.

    Sums blocks of gcd(tile, stride) first (a reshape), then adds the few blocks of each window:
    tile / stride additions of a (count, W) array, never a loop over windows.
    """
    block = math.gcd(tile, stride)
    extent = (count - 1) * stride + tile
    # small integers sum faster in int32 and cannot overflow it within one block
    narrow = np.int32 if a.dtype.kind in "ui" and a.dtype.itemsize <= 2 and block <= 1 << 15 else wide
    if axis == 0:
        blocks = a[:extent].reshape(extent // block, block, a.shape[1]).sum(axis=1, dtype=narrow)
    else:
        blocks = a[:, :extent].reshape(a.shape[0], extent // block, block).sum(axis=2, dtype=narrow).T
    span, step = tile // block, stride // block
    starts = np.arange(count) * step
    out = blocks[starts].astype(wide)
    for k in range(1, span):
        out += blocks[starts + k]
    return out if axis == 0 else out.T


def invalid_mask(image: np.ndarray, tag_value: float | None, nodata: float | None) -> np.ndarray | None:
    """bool (H, W): pixels where any band is NaN, the file's GDAL nodata value or ``nodata``;
    None where no pixel can be invalid."""
    invalid = invalid_samples(image, [tag_value, nodata])
    return None if invalid is None else invalid.any(axis=-1)


def class_mask(plane: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """bool (H, W): where ``plane`` (H, W) of integer class ids holds one of ``classes``."""
    if len(classes) > 8:
        return np.isin(plane, classes)
    mask = plane == classes[0]
    for value in classes[1:]:
        mask |= plane == value
    return mask


def may_hold_nodata(info: ImageInfo, nodata: float | None) -> bool:
    """Whether an image with header ``info`` can hold an invalid pixel (float samples, a nodata tag or value)."""
    return info.dtype.kind == "f" or info.nodata is not None or nodata is not None


def region_targets(inputs: Sequence[str], targets: Sequence[str], input_infos: Sequence[ImageInfo],
                   target_infos: Sequence[ImageInfo], specs: Sequence[TargetSpec], tile: tuple[int, int],
                   stride: tuple[int, int], shape: tuple[int, int],
                   nodata: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(targets float64 (T, k, ny, nx), nodata share float64 (ny, nx), the largest over labels).

    Reads one image at a time: the target image of each label, and its input image where that
    one may hold nodata.
    """
    ny, nx = shape
    area = tile[0] * tile[1]
    values = np.full((len(inputs), len(specs), ny, nx), np.nan)
    worst = np.zeros(shape)
    for t, (source, target) in enumerate(zip(inputs, targets)):
        source_may = may_hold_nodata(input_infos[t], nodata)
        invalid = np.zeros((ny, nx), dtype=np.int64)
        image = mask = None
        if specs or source_may:
            image = read_with_tifffile(target)
            mask = invalid_mask(image, target_infos[t].nodata, nodata)
            if mask is not None:
                invalid = tile_sums(mask, tile, stride, shape)
                mask_sums = invalid
        if source != target and source_may:
            source_mask = invalid_mask(read_with_tifffile(source), input_infos[t].nodata, nodata)
            if source_mask is not None:
                invalid = np.maximum(invalid, tile_sums(source_mask, tile, stride, shape))
        worst = np.maximum(worst, invalid / area)
        if not specs:
            continue
        counts = area - mask_sums if mask is not None else area
        with np.errstate(invalid="ignore", divide="ignore"):
            for k, spec in enumerate(specs):
                if spec.kind == "mean":
                    band = image[..., spec.band]
                    values[t, k] = tile_sums(band if mask is None else np.where(mask, 0, band), tile, stride,
                                             shape) / counts
                else:
                    hit = class_mask(image[..., 0], spec.classes)
                    values[t, k] = tile_sums(hit if mask is None else hit & ~mask, tile, stride, shape) / counts
    for k, spec in enumerate(specs):
        if spec.kind == "change":
            values[:, k] -= values[0, k].copy()
    return values, worst
