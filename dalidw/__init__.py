"""dalidw: a DALI data loader of satellite image time series for Keras ConvLSTM models."""

from .errors import DataError, DecodeError, DeviceUnavailableError, OptionError, SlowPathWarning
from .index import parse_box
from .loader import SequenceDataLoader
from .tiles import TileReport, build_tiles, write_table, write_tiles

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "DecodeError",
    "DeviceUnavailableError",
    "OptionError",
    "SequenceDataLoader",
    "SlowPathWarning",
    "TileReport",
    "__version__",
    "build_tiles",
    "parse_box",
    "write_table",
    "write_tiles",
]
