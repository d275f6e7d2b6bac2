"""The one exception type for bad data, and how it lists what it found."""

from __future__ import annotations

from collections.abc import Sequence

#: How many problems a :class:`DataError` message lists before it only counts the rest.
MAX_LISTED = 20


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
