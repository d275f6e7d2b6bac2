"""Whole-region decoding: encoded TIFF bytes in, (H, W, bands) arrays in host memory out.

DALI decodes what its TIFF decoder can read; the rest (planar-separate bands, signed samples,
and any file DALI turns out to refuse) takes the slow path, tifffile on the CPU, with the same
output. Each file that takes the slow path is said once, in a warning, with the reason.

DALI's decoder turns a damaged strip or tile into zeros or garbage without failing, so the bytes
it gets are checked first, segment by segment (:func:`check_segments`). Its output for a storage
layout it gets wrong is just as silent (float32 on the GPU, for one), so the first image of every
layout it decodes is compared with tifffile's pixels; a layout that disagrees takes the slow path.
"""

from __future__ import annotations

import io
import warnings
import zlib
from collections.abc import Sequence

import numpy as np

from .bands import DALI_DECODES, DALI_GPU_DECODES, DALI_TYPE_NAMES
from .errors import DecodeError, SlowPathWarning

#: How many slow-path files a warning lists by name.
WARN_LISTED = 5


class RegionDecoder:
    """Decodes whole region images, every band, in their own sample type.

    DALI's decoder runs with ``output_type=ANY_DATA`` (all bands kept) and ``dtype`` set to the
    images' sample type (16-bit and float data kept). On the GPU the "mixed" decoder lets
    nvImageCodec decode on the device where it can (and fall back to its CPU codecs where it
    cannot); the result is copied to host memory. Float32 images are decoded by DALI's CPU
    decoder on both devices (:func:`decode_backend`).

    Args:
        dtype: the sample type of the images (uint8, uint16, int16 or float32).
        device: "cpu" or "gpu".
        device_id: the GPU, or None on the CPU.
        max_batch: most images decoded in one run.
        num_threads: DALI's CPU threads.
        verify: decode every image a second time with tifffile and compare.
        slow_path: path -> reason, for images known (from their headers) to need tifffile.

    DALI's TIFF decoder fills what it cannot decode with zeros (or garbage) instead of failing.
    The encoded bytes of every file are therefore checked segment by segment before DALI gets
    them (:func:`check_segments`), once per file content: later decodes of the same bytes only
    compare a CRC-32. An image that decodes to all zeros is also decoded again with tifffile,
    which does fail; ``verify=True`` extends that to every image.

    DALI's decoder can also give other pixels than the file holds, without an error, for a whole
    storage layout (compression, predictor, sample type, bands, tiling, photometric, bit depth). The
    first image of each layout DALI decodes is therefore compared with tifffile's pixels; when they
    differ, that file and every later file of the layout take the slow path, with a
    :class:`SlowPathWarning` naming the layout. One tifffile decode per layout is the whole cost.
    """

    def __init__(self, *, dtype: np.dtype, device: str, device_id: int | None, max_batch: int = 8,
                 num_threads: int = 2, verify: bool = False, slow_path: dict[str, str] | None = None):
        self.dtype = np.dtype(dtype)
        self.slow_path: dict[str, str] = dict(slow_path or {})
        self._warned: set[str] = set()
        self.device = device
        self.device_id = device_id
        self.max_batch = max_batch
        self.num_threads = num_threads
        self.verify = verify
        self._sound: dict[str, tuple[int, int]] = {}  # path -> (size, CRC-32) of bytes that passed the check
        self._layouts: dict[str, str] = {}  # path -> its storage layout, from the last check of its bytes
        self._trusted: dict[str, bool] = {}  # layout -> whether DALI's decode of its first image was right
        self._first: dict[str, str] = {}  # layout -> the file it was judged on
        self.backend = decode_backend(self.dtype, device)
        try:
            self._pipe = self._build()
        except Exception as err:  # DALI raises several kinds when an operator cannot be set up
            if self.backend != "mixed":
                raise
            self._to_cpu_backend(err)

    def _to_cpu_backend(self, err: Exception) -> None:
        """Decode with DALI's CPU backend from now on (the frames still go to the GPU afterwards)."""
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        warnings.warn(f"dalidw: DALI's 'mixed' image decoder failed ({reason}); decoding regions with DALI's "
                      "CPU decoder instead. Resizing and normalization still run on the GPU.", RuntimeWarning,
                      stacklevel=3)
        self.backend = "cpu"
        self._trusted = {}  # what the GPU decoder got right says nothing of the CPU decoder
        self._pipe = self._build()

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        if self.dtype.name not in DALI_DECODES:
            return None  # DALI does not decode this sample type: every image takes the slow path
        dali_dtype = getattr(types, DALI_TYPE_NAMES[self.dtype.name])
        backend = self.backend

        @pipeline_def(batch_size=self.max_batch, num_threads=self.num_threads, device_id=self.device_id,
                      prefetch_queue_depth=1, exec_dynamic=True)
        def region_decode():
            encoded = fn.external_source(name="encoded", batch=False, dtype=types.UINT8)
            return fn.decoders.image(encoded, device=backend, output_type=types.ANY_DATA, dtype=dali_dtype)

        pipe = region_decode()
        pipe.build()
        return pipe

    def run_dali(self, encoded: list[bytes]) -> list[np.ndarray]:
        """DALI's decoding of whole encoded files, unchecked: one array (H, W, bands) each, on the host."""
        self._pipe.feed_input("encoded", [np.frombuffer(e, dtype=np.uint8) for e in encoded])
        (out,) = self._pipe.run()
        if self.backend == "mixed":
            out = out.as_cpu()
        return [np.array(out[i]) for i in range(len(encoded))]

    def decode(self, paths: Sequence[str], shapes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Decode whole images.

        Args:
            paths: the files.
            shapes: the (height, width) each header announced.

        Returns:
            one array per path, (height, width, bands) of ``dtype``.

        Raises:
            DecodeError: naming the first file that cannot be decoded, that has a damaged
                strip or tile, or whose decoded size differs from its header.
        """
        results: dict[int, np.ndarray] = {}
        fast = [i for i, p in enumerate(paths) if p not in self.slow_path] if self._pipe is not None else []
        for start in range(0, len(fast), self.max_batch):
            chunk = fast[start : start + self.max_batch]
            encoded = {i: self._read_checked(paths[i]) for i in chunk}
            for i in chunk:
                if self._trusted.get(self._layouts[paths[i]]) is False:  # a layout DALI got wrong before
                    self._distrust(paths[i])
                    del encoded[i]
            if not encoded:
                continue
            try:
                decoded = self.run_dali(list(encoded.values()))
            except Exception as err:
                if self.backend == "mixed":  # try DALI's CPU decoder before any file takes the slow path
                    self._to_cpu_backend(err)
                else:
                    self._pipe = self._build()
                decoded = [self._decode_one(paths[i], e) for i, e in encoded.items()]
            for i, image in zip(encoded, decoded):
                if image is None:
                    continue  # DALI refused it: it joined the slow path
                layout = self._layouts[paths[i]]
                compared = layout not in self._trusted
                if compared:  # the layout's first image: DALI's pixels against tifffile's, once per layout
                    self._trusted[layout], self._first[layout] = _same_as_tifffile(paths[i], image), paths[i]
                if not self._trusted[layout]:
                    self._distrust(paths[i])
                    continue
                if not compared and (self.verify or not image.any()):
                    _check_with_tifffile(paths[i], image)
                results[i] = image
        for i, path in enumerate(paths):
            if i not in results:
                self.slow_path.setdefault(path, f"DALI does not decode {self.dtype.name} samples")
                results[i] = read_with_tifffile(path)
        self.warn_slow_path(paths)
        out = []
        for i, (path, shape) in enumerate(zip(paths, shapes)):
            image = results[i]
            if image.shape[:2] != tuple(shape) or image.dtype != self.dtype:
                raise DecodeError(path, f"decoded {image.shape} {image.dtype}, expected "
                                        f"{tuple(shape)} {self.dtype} from its header")
            out.append(image)
        return out

    def check(self, path: str) -> list[str]:
        """Check every strip and tile of ``path`` now, as a decode would first: the problem line of a
        damaged file, or [] (and a sound file is not checked again when it is decoded)."""
        try:
            self._read_checked(path)
        except DecodeError as err:
            return err.problems
        return []

    def _read_checked(self, path: str) -> bytes:
        """The bytes of ``path``, their strips or tiles checked unless these very bytes passed before."""
        encoded = _read_bytes(path)
        key = (len(encoded), zlib.crc32(encoded))
        if self._sound.get(path) != key:
            self._layouts[path] = check_segments(path, encoded)
            self._sound[path] = key
        return encoded

    def _distrust(self, path: str) -> None:
        """Send ``path`` to the slow path, its layout being one DALI's decoder got wrong; the warning
        names the layout once, with the file it was found on, not every later file of it."""
        layout = self._layouts[path]
        first = self._first[layout]
        if path != first and first in self._warned:
            self._warned.add(path)  # said with the layout's first file
        self.slow_path[path] = (f"DALI's {self.backend} decoder gave other pixels than tifffile for {first}, stored "
                                f"as {layout}: every file stored so is decoded by tifffile")

    def _decode_one(self, path: str, encoded: bytes) -> np.ndarray | None:
        """DALI's decode of one file, or None (and the file joins the slow path) if DALI refuses it."""
        try:
            return self.run_dali([encoded])[0]
        except Exception as err:
            self._pipe = self._build()
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            self.slow_path[path] = f"DALI's decoder failed: {reason}"
            return None

    def warn_slow_path(self, paths: Sequence[str]) -> None:
        """Warn once about each of ``paths`` that takes the slow path."""
        new = [p for p in paths if p in self.slow_path and p not in self._warned]
        if not new:
            return
        self._warned.update(new)
        listed = "; ".join(f"{p} ({self.slow_path[p]})" for p in new[:WARN_LISTED])
        more = f"; and {len(new) - WARN_LISTED} more" if len(new) > WARN_LISTED else ""
        warnings.warn(f"dalidw: {len(new)} image(s) decoded by tifffile on the CPU (the slow path), as DALI's "
                      f"decoder cannot read them as stored: {listed}{more}. The batches are the same; only slower. "
                      "loader.slow_path lists them all.", SlowPathWarning, stacklevel=4)


def decode_backend(dtype: np.dtype, device: str) -> str:
    """DALI's decoder backend for images of ``dtype`` when the graph runs on ``device``: "mixed"
    (nvImageCodec on the GPU) for the sample types it decodes right, else "cpu"."""
    return "mixed" if device == "gpu" and np.dtype(dtype).name in DALI_GPU_DECODES else "cpu"


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as err:
        raise DecodeError(path, f"cannot read the file: {err.strerror}") from None


def check_segments(path: str, encoded: bytes) -> str:
    """Check every strip or tile of a TIFF's first image, as stored in ``encoded`` (the bytes of ``path``),
    and return its storage layout, e.g. "ADOBE_DEFLATE, predictor 2, uint16, 4 band(s), 1 extra, CONTIG,
    tiles of 256x256, RGB, 16-bit, little-endian".

    Each segment is decompressed by tifffile's codecs and must give the size its header implies;
    deflate streams must also match their Adler-32 checksum. Empty segments (byte count 0, the
    "sparse" tiles of GDAL) are not damage. Compressions tifffile cannot decode are not checked.

    Raises:
        DecodeError: naming the file and the first damaged strip or tile.
    """
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(encoded)) as tif:
            page = tif.pages.first
            segments = (f"tiles of {page.tilelength}x{page.tilewidth}" if page.is_tiled
                        else f"strips of {page.rowsperstrip} rows")
            layout = (f"{_name(page.compression)}, predictor {int(page.predictor)}, {page.dtype}, "
                      f"{int(page.samplesperpixel)} band(s), {len(page.extrasamples)} extra, "
                      f"{_name(page.planarconfig)}, {segments}, {_name(page.photometric)}, "
                      f"{int(page.bitspersample)}-bit, {'big' if tif.byteorder == '>' else 'little'}-endian")
            if page.compression != 1 and page.compression not in tifffile.TIFF.DECOMPRESSORS:
                return layout
            kind = "tile" if page.is_tiled else "strip"
            offsets, counts = page.dataoffsets, page.databytecounts
            decode, tables = page.decode, page.jpegtables
    except Exception as err:  # tifffile raises many kinds for a broken header
        raise DecodeError(path, f"not a readable TIFF ({type(err).__name__}: {err})") from None
    for index, (offset, count) in enumerate(zip(offsets, counts)):
        if count == 0:
            continue
        where = f"{kind} {index} of {len(offsets)}"
        if offset + count > len(encoded):
            raise DecodeError(path, f"{where} ends at byte {offset + count}, beyond the end of the file "
                                    f"({len(encoded)} bytes); the file is truncated")
        try:
            decode(encoded[offset : offset + count], index, jpegtables=tables)
        except Exception as err:  # the codecs raise their own kinds
            raise DecodeError(path, f"{where} is damaged: {type(err).__name__}: {err}") from None
    return layout


def _name(value: object) -> str:
    """A tifffile enum's name, or the number where the value has none."""
    return str(getattr(value, "name", value))


def read_with_tifffile(path: str) -> np.ndarray:
    """The first image of a TIFF as (H, W, bands), planar-separate bands moved last.

    Raises:
        DecodeError: tifffile cannot decode it.
    """
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            pixels = page.asarray()
            separate = int(page.samplesperpixel) > 1 and int(page.planarconfig) == 2
    except Exception as err:
        raise DecodeError(path, f"{type(err).__name__}: {err}") from None
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    elif separate:
        pixels = np.moveaxis(pixels, 0, -1)
    return np.ascontiguousarray(pixels)


def _same_as_tifffile(path: str, image: np.ndarray) -> bool:
    """Whether tifffile's decode of ``path`` gives ``image`` (NaN equal to NaN).

    Raises:
        DecodeError: tifffile cannot decode it.
    """
    pixels = read_with_tifffile(path)
    return pixels.shape == image.shape and bool(np.array_equal(pixels, image, equal_nan=pixels.dtype.kind == "f"))


def _check_with_tifffile(path: str, image: np.ndarray) -> None:
    """Raise DecodeError if tifffile cannot decode ``path`` or gives other pixels than ``image``."""
    if not _same_as_tifffile(path, image):
        raise DecodeError(path, "DALI's decoder and tifffile disagree on its pixels; the file may be damaged")
