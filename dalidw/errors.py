"""The exception types of the user's mistakes (one per kind), how they list what they found, and
warnings that point at the user's line."""

from __future__ import annotations

import inspect
import os
import struct
import warnings
import zlib
from collections.abc import Sequence

#: How many problems a :class:`DataError` message lists before it only counts the rest.
MAX_LISTED = 20
#: What tifffile and the codecs raise for a file they cannot read: tifffile's TiffFileError (a
#: ValueError) and ValueError, imagecodecs' codec errors (RuntimeErrors), zlib.error where the
#: codecs are missing, and struct.error, EOFError, IndexError, KeyError or OSError for a broken
#: or truncated header. Each ``except`` that names it wraps tifffile calls alone, so that our own
#: mistakes are not taken for the file's.
TIFF_ERRORS = (ValueError, RuntimeError, zlib.error, struct.error, EOFError, IndexError, KeyError, OSError)


class DataError(ValueError):
    """The tiles table or the images are not usable as they are.

    Attributes:
        problems: every problem found, one line each, in the order found.
    """

    def __init__(self, problems: Sequence[str], *, context: str = "dalidw found problems in the data"):
        self.problems: list[str] = list(problems)
        shown = self.problems[:MAX_LISTED]
        lines = [f"{context} ({len(self.problems)} in all):"]
        lines += [f"  - {p}" for p in shown]
        rest = len(self.problems) - len(shown)
        if rest > 0:
            lines.append(f"  ... and {rest} more")
        super().__init__("\n".join(lines))


class DecodeError(DataError):
    """An image could not be decoded; the message names its path."""

    def __init__(self, path: str, reason: str):
        self.path = path
        super().__init__([f"{path}: cannot decode ({reason})"], context="dalidw could not decode an image")


class OptionError(ValueError):
    """An option (of the loader, the tiles builder, a strategy or a command) is out of range or
    does not fit the others; the message names it and the value received."""


class SlowPathWarning(UserWarning):
    """Some images are decoded by tifffile on the CPU instead of by DALI (same pixels, slower)."""


class DeviceUnavailableError(RuntimeError):
    """The device asked for (a GPU) is not there; says which devices DALI sees."""


def shown(value: object) -> str:
    """A value as a message shows it: numpy scalars as plain Python values (2, not np.int64(2))."""
    item = getattr(value, "item", None)
    if item is not None and getattr(value, "shape", None) == ():
        value = item()
    return repr(value)


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str, category: type[Warning] = RuntimeWarning) -> None:
    """``warnings.warn`` pointing at the first caller outside dalidw: the user's line, whether the
    warning comes from the loader's constructor or from a batch decoded later (a thread of
    TensorFlow's, with no user code on its stack, points at its outermost frame)."""
    frame, level = inspect.currentframe().f_back, 1
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level + 1)
