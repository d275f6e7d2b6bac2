"""Whole-region decoding: encoded TIFF bytes in, (H, W, bands) arrays in host memory out.

Three jobs, one class each, and :class:`RegionDecoder` over them:

- :class:`DaliDecoder` runs DALI's image decoder on one backend ("mixed": nvImageCodec on the GPU;
  "cpu"), whole files in, host arrays out;
- :class:`LayoutTrust` judges DALI's pixels once per storage layout against tifffile's, since DALI
  can be wrong for a whole layout without an error (float32 on the GPU, for one);
- :class:`SlowPath` holds the files tifffile decodes instead (planar-separate bands, signed
  samples, a layout DALI gets wrong, a file DALI refuses) and says each one once, in a warning.

DALI's decoder also turns a damaged strip or tile into zeros or garbage without failing, so the
bytes it gets are checked first, segment by segment (:func:`check_segments`).
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterable, Sequence

import numpy as np

from .bands import DALI_DECODES, DALI_GPU_DECODES, DALI_TYPE_NAMES
from .errors import TIFF_ERRORS, DecodeError, SlowPathWarning, warn

#: How many slow-path files a warning lists by name.
WARN_LISTED = 5


class SlowPath:
    """The images decoded by tifffile on the CPU instead of DALI (path -> why), each said once in a
    :class:`SlowPathWarning`.

    Args:
        reasons: path -> why, for the images known (from their headers) to need tifffile.
    """

    def __init__(self, reasons: dict[str, str] | None = None):
        self.reasons: dict[str, str] = dict(reasons or {})
        self._said: set[str] = set()

    def __contains__(self, path: str) -> bool:
        return path in self.reasons

    def add(self, path: str, reason: str, *, said: bool = False) -> None:
        """``path`` takes the slow path for ``reason``; ``said``: a warning already covers it (a file of
        a layout whose warning named another file), so :meth:`warn` leaves it out."""
        self.reasons[path] = reason
        if said:
            self._said.add(path)

    def said(self, path: str) -> bool:
        """Whether a warning has named ``path`` (or covers it)."""
        return path in self._said

    def warn(self, paths: Iterable[str]) -> None:
        """One warning naming each of ``paths`` that takes the slow path and was not said before."""
        new = [p for p in dict.fromkeys(paths) if p in self.reasons and p not in self._said]
        if not new:
            return
        self._said.update(new)
        listed = "; ".join(f"{p} ({self.reasons[p]})" for p in new[:WARN_LISTED])
        more = f"; and {len(new) - WARN_LISTED} more" if len(new) > WARN_LISTED else ""
        warn(f"dalidw: {len(new)} image(s) decoded by tifffile on the CPU (the slow path), as DALI's decoder cannot "
             f"read them as stored: {listed}{more}. The batches are the same; only slower. loader.slow_path lists "
             "them all.", SlowPathWarning)


class DaliDecoder:
    """DALI's image decoder on one backend: whole encoded files in, one (H, W, bands) host array each
    out, every band kept (``output_type=ANY_DATA``) in the images' own sample type.

    Args:
        dtype: the sample type of the images, one of ``bands.DALI_DECODES``.
        backend: "mixed" (nvImageCodec on the GPU, falling back to its CPU codecs where it must;
            the result is copied to host memory, and DALI's pool lets the device copy go) or "cpu".
        device_id: the GPU, or None on the CPU.
        max_batch: most files decoded in one run.
        num_threads: DALI's CPU threads.

    Raises:
        RuntimeError: DALI cannot set the decoder up on this backend (DALI's own error).
    """

    def __init__(self, dtype: np.dtype, backend: str, device_id: int | None, max_batch: int, num_threads: int):
        self.dtype, self.backend, self.device_id = np.dtype(dtype), backend, device_id
        self.max_batch, self.num_threads = max_batch, num_threads
        self._pipe = self._build()

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

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

    def run(self, encoded: list[bytes]) -> list[np.ndarray]:
        """DALI's decoding of whole encoded files, unchecked: one array (H, W, bands) each, on the host.

        Raises:
            RuntimeError: DALI refused a file (DALI's own error); the decoder is usable again after it.
        """
        try:
            self._pipe.feed_input("encoded", [np.frombuffer(e, dtype=np.uint8) for e in encoded])
            (out,) = self._pipe.run()
        except RuntimeError:
            self._pipe = self._build()  # a pipeline that raised keeps its failed iteration queued
            raise
        if self.backend != "mixed":
            return [np.array(out[i]) for i in range(len(encoded))]
        host = out.as_cpu()
        images = [np.array(host[i]) for i in range(len(encoded))]
        del out, host
        # the decoded images (a few hundred MiB for 4096x4096 regions) would stay in DALI's device
        # pool, unused until the next region is decoded: that memory goes back to the GPU
        from nvidia.dali.backend import ReleaseUnusedMemory

        ReleaseUnusedMemory()
        return images


class LayoutTrust:
    """Whether DALI's decoder gives tifffile's pixels for each storage layout (compression,
    predictor, sample type, bands, tiling, photometric, bit depth), judged on the layout's first
    image; one tifffile decode per layout is the whole cost."""

    def __init__(self):
        self._trusted: dict[str, bool] = {}
        self._first: dict[str, str] = {}  # layout -> the file it was judged on

    def known_wrong(self, layout: str) -> bool:
        """Whether DALI was found to get ``layout`` wrong."""
        return self._trusted.get(layout) is False

    def judge(self, layout: str, path: str, image: np.ndarray) -> bool | None:
        """On the first image of ``layout`` (``path``, DALI's pixels ``image``): whether tifffile agrees;
        None for later images of a layout already judged.

        Raises:
            DecodeError: tifffile cannot decode the file.
        """
        if layout in self._trusted:
            return None
        self._trusted[layout], self._first[layout] = _same_as_tifffile(path, image), path
        return self._trusted[layout]

    def first(self, layout: str) -> str:
        """The file ``layout`` was judged on."""
        return self._first[layout]

    def forget(self) -> None:
        """Judge every layout again (another backend decodes from now on)."""
        self._trusted.clear()
        self._first.clear()


class RegionDecoder:
    """Decodes whole region images, every band, in their own sample type: DALI where it reads them
    right (:class:`DaliDecoder`, :class:`LayoutTrust`), tifffile elsewhere (:class:`SlowPath`).

    On the GPU DALI's "mixed" decoder runs where it decodes the sample type right
    (:func:`decode_backend`); if it cannot be set up, DALI's CPU decoder takes over, with a warning.
    Every file's strips or tiles are checked before DALI gets them (:func:`check_segments`), once per
    file content: later decodes of the same bytes only compare a CRC-32. An image that decodes to all
    zeros is decoded again by tifffile, which does fail on damage; ``verify=True`` does that for every
    image.

    Args:
        dtype: the sample type of the images (uint8, uint16, int16 or float32).
        device: "cpu" or "gpu".
        device_id: the GPU, or None on the CPU.
        max_batch: most images decoded in one run.
        num_threads: DALI's CPU threads.
        verify: decode every image a second time with tifffile and compare.
        slow_path: path -> reason, for images known (from their headers) to need tifffile.
    """

    def __init__(self, *, dtype: np.dtype, device: str, device_id: int | None, max_batch: int = 8,
                 num_threads: int = 2, verify: bool = False, slow_path: dict[str, str] | None = None):
        self.dtype = np.dtype(dtype)
        self.slow = SlowPath(slow_path)
        self.max_batch = max_batch
        self.verify = verify
        self.trust = LayoutTrust()
        self._sound: dict[str, tuple[int, int]] = {}  # path -> (size, CRC-32) of bytes that passed the check
        self._layouts: dict[str, str] = {}  # path -> its storage layout, from the last check of its bytes
        self.dali: DaliDecoder | None = None
        if self.dtype.name in DALI_DECODES:  # else every image takes the slow path
            backend = decode_backend(self.dtype, device)
            try:
                self.dali = DaliDecoder(self.dtype, backend, device_id, max_batch, num_threads)
            except RuntimeError as err:  # DALI's error: the GPU decoder cannot be set up here
                if backend != "mixed":
                    raise
                self._to_cpu(err, device_id, num_threads)

    @property
    def backend(self) -> str | None:
        """DALI's decoder backend in use ("mixed" or "cpu"), or None where DALI decodes nothing."""
        return self.dali.backend if self.dali is not None else None

    @property
    def slow_path(self) -> dict[str, str]:
        """The images decoded by tifffile: path -> why."""
        return self.slow.reasons

    def _to_cpu(self, err: RuntimeError, device_id: int | None, num_threads: int) -> None:
        """Decode with DALI's CPU backend from now on (the frames still go to the GPU afterwards)."""
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        warn(f"dalidw: DALI's 'mixed' image decoder failed ({reason}); decoding regions with DALI's CPU decoder "
             "instead. Resizing and normalization still run on the GPU.")
        self.dali = DaliDecoder(self.dtype, "cpu", device_id, self.max_batch, num_threads)
        self.trust.forget()  # what the GPU decoder got right says nothing of the CPU decoder

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
        fast = [i for i, p in enumerate(paths) if p not in self.slow] if self.dali is not None else []
        for start in range(0, len(fast), self.max_batch):
            results.update(self._decode_with_dali(paths, fast[start : start + self.max_batch]))
        for i, path in enumerate(paths):
            if i not in results:
                if path not in self.slow:
                    self.slow.add(path, f"DALI does not decode {self.dtype.name} samples")
                results[i] = read_with_tifffile(path)
        self.slow.warn(paths)
        out = []
        for i, (path, shape) in enumerate(zip(paths, shapes)):
            image = results[i]
            if image.shape[:2] != tuple(shape) or image.dtype != self.dtype:
                raise DecodeError(path, f"decoded {image.shape} {image.dtype}, expected "
                                        f"{tuple(shape)} {self.dtype} from its header")
            out.append(image)
        return out

    def _decode_with_dali(self, paths: Sequence[str], chunk: list[int]) -> dict[int, np.ndarray]:
        """DALI's images of ``paths[i]`` for i in ``chunk`` (at most ``max_batch``), checked; the files
        it refuses or gets wrong join the slow path and are left out."""
        encoded = {i: self._read_checked(paths[i]) for i in chunk}
        for i in chunk:
            if self.trust.known_wrong(self._layouts[paths[i]]):
                self._distrust(paths[i])
                del encoded[i]
        if not encoded:
            return {}
        try:
            decoded = dict(zip(encoded, self.dali.run(list(encoded.values()))))
        except RuntimeError as err:  # DALI refused a file of the chunk: find which, one at a time
            if self.dali.backend == "mixed":  # try DALI's CPU decoder before any file takes the slow path
                self._to_cpu(err, self.dali.device_id, self.dali.num_threads)
            decoded = {i: image for i, e in encoded.items() if (image := self._decode_one(paths[i], e)) is not None}
        out = {}
        for i, image in decoded.items():
            path = paths[i]
            layout = self._layouts[path]
            judged = self.trust.judge(layout, path, image)
            if self.trust.known_wrong(layout):  # judged wrong on this image or on an earlier one of the chunk
                self._distrust(path)
                continue
            if judged is None and (self.verify or not image.any()):
                _check_with_tifffile(path, image)
            out[i] = image
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
        """Send ``path`` to the slow path, its layout being one DALI's decoder got wrong. The warning
        names the layout once, with the file it was judged on: a later file of the layout is covered
        by it once that file has been named."""
        layout = self._layouts[path]
        first = self.trust.first(layout)
        self.slow.add(path, f"DALI's {self.dali.backend} decoder gave other pixels than tifffile for {first}, "
                            f"stored as {layout}: every file stored so is decoded by tifffile",
                      said=path != first and self.slow.said(first))

    def _decode_one(self, path: str, encoded: bytes) -> np.ndarray | None:
        """DALI's decode of one file, or None (and the file joins the slow path) if DALI refuses it."""
        try:
            return self.dali.run([encoded])[0]
        except RuntimeError as err:  # DALI's error for a file it cannot read
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            self.slow.add(path, f"DALI's decoder failed: {reason}")
            return None


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
    except TIFF_ERRORS as err:
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
        except TIFF_ERRORS as err:
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
    except TIFF_ERRORS as err:
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
