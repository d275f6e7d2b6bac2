"""Invalid samples: NaN in float images and a nodata value (the option, or each file's GDAL_NODATA tag),
replaced by a fill value once per decoded image, before anything is resized, so they never smear
into valid pixels. Without a rule, NaN in an image is reported once per file."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import OptionError, warn
from .options import is_number

#: The TIFF tag where GDAL writes an image's nodata value, as text.
GDAL_NODATA_TAG = 42113


@dataclass(frozen=True)
class NodataRule:
    """Which samples are invalid, and what they become.

    Attributes:
        value: the nodata value in stored units; None with ``from_tag`` or for none.
        from_tag: each file's GDAL_NODATA tag gives its value (files without the tag have none).
        fill: what invalid samples become, in stored units (before normalization).
        active: whether any rule is set (NaN in float images is then invalid too).
    """

    value: float | None = None
    from_tag: bool = False
    fill: float = 0.0

    @property
    def active(self) -> bool:
        return self.from_tag or self.value is not None

    @classmethod
    def from_options(cls, nodata: Any, fill: Any) -> NodataRule:
        """Check the loader's ``nodata`` (None, a number, NaN or "tag") and ``nodata_fill`` (a finite number).

        Raises:
            ValueError: either is out of range.
        """
        if not is_number(fill) or not math.isfinite(fill):
            raise OptionError(f"Expected `nodata_fill` to be a finite number. Received: nodata_fill={fill!r}")
        if nodata is None:
            return cls(fill=float(fill))
        if nodata == "tag":
            return cls(from_tag=True, fill=float(fill))
        if not is_number(nodata):
            raise OptionError("Expected `nodata` to be None, a number (NaN too) or 'tag' (each file's GDAL_NODATA). "
                             f"Received: nodata={nodata!r}")
        return cls(value=float(nodata), fill=float(fill))

    def check_dtype(self, dtype: np.dtype) -> None:
        """Raise ValueError if ``fill`` is not a sample of ``dtype`` (it would wrap around)."""
        if self.active and not _fits(self.fill, np.dtype(dtype)):
            raise OptionError(f"`nodata_fill`={self.fill:g} is not a {np.dtype(dtype).name} sample, the images' type")

    def apply(self, image: np.ndarray, path: str, file_value: float | None, warned: set[str]) -> np.ndarray:
        """``image`` (H, W, bands) with invalid samples set to ``fill`` (a copy where any is found).

        Without a rule, NaN is left in place and reported once per path (``warned`` remembers).
        """
        floating = image.dtype.kind == "f"
        if not self.active:
            if floating and path not in warned:
                count = int(np.isnan(image).sum())
                if count:
                    warned.add(path)
                    warn(f"dalidw: {path} holds {count} NaN sample(s); resizing spreads them to nearby "
                                  "output pixels. Set nodata= (NaN, a value, or 'tag') to replace them first.")
            return image
        invalid = invalid_samples(image, [file_value if self.from_tag else self.value])
        if invalid is None or not invalid.any():
            return image
        out = image.copy()
        out[invalid] = np.asarray(self.fill).astype(image.dtype)
        return out


def invalid_samples(image: np.ndarray, values: Sequence[float | None]) -> np.ndarray | None:
    """bool, ``image``'s shape: the samples that are NaN (in float images) or equal to one of ``values``
    (None and NaN entries aside, and values the sample type cannot hold); None where none can be."""
    values = [v for v in values if v is not None and not math.isnan(v) and _fits(v, image.dtype)]
    floating = image.dtype.kind == "f"
    if not floating and not values:
        return None
    invalid = np.isnan(image) if floating else np.zeros(image.shape, dtype=bool)
    for value in values:
        invalid |= image == np.asarray(value).astype(image.dtype)
    return invalid


def _fits(value: float, dtype: np.dtype) -> bool:
    """Whether ``value`` is a sample ``dtype`` can hold exactly."""
    if dtype.kind == "f":
        return True
    info = np.iinfo(dtype)
    return float(value).is_integer() and info.min <= value <= info.max


def tag_value(text: Any) -> float | None:
    """A GDAL_NODATA tag's text ("-9999", "nan") as a number, or None where absent or unreadable."""
    if text is None:
        return None
    try:
        return float(str(text).strip().strip("\x00"))
    except ValueError:
        return None
