"""Whole-region decoding with DALI: encoded TIFF bytes in, (H, W, C) arrays in host memory out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import DecodeError


class RegionDecoder:
    """Decodes whole region images with a small DALI pipeline.

    On the GPU the "mixed" decoder lets nvImageCodec decode on the device where it can
    (and fall back to its CPU codecs where it cannot); the result is copied to host memory.

    Args:
        n_channels: 1 for gray (ITU-R 601 luma), 3 for RGB.
        dtype: the sample type of the images, uint8 or uint16.
        device: "cpu" or "gpu".
        device_id: the GPU, or None on the CPU.
        max_batch: most images decoded in one run.
        num_threads: DALI's CPU threads.
        verify: decode every image a second time with tifffile and compare.

    DALI's TIFF decoder fills what it cannot decode with zeros instead of failing; an image
    that decodes to all zeros is therefore decoded again with tifffile, which does fail.
    ``verify=True`` extends that check to every image.
    """

    def __init__(self, *, n_channels: int, dtype: np.dtype, device: str, device_id: int | None,
                 max_batch: int = 8, num_threads: int = 2, verify: bool = False):
        self.n_channels = n_channels
        self.dtype = np.dtype(dtype)
        self.device = device
        self.device_id = device_id
        self.max_batch = max_batch
        self.num_threads = num_threads
        self.verify = verify
        self._pipe = self._build()

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        output_type = types.GRAY if self.n_channels == 1 else types.RGB
        dali_dtype = types.UINT16 if self.dtype == np.uint16 else types.UINT8
        backend = "mixed" if self.device == "gpu" else "cpu"

        @pipeline_def(batch_size=self.max_batch, num_threads=self.num_threads, device_id=self.device_id,
                      prefetch_queue_depth=1, exec_dynamic=True)
        def region_decode():
            encoded = fn.external_source(name="encoded", batch=False, dtype=types.UINT8)
            return fn.decoders.image(encoded, device=backend, output_type=output_type, dtype=dali_dtype)

        pipe = region_decode()
        pipe.build()
        return pipe

    def _run(self, encoded: list[np.ndarray]) -> list[np.ndarray]:
        self._pipe.feed_input("encoded", encoded)
        (out,) = self._pipe.run()
        if self.device == "gpu":
            out = out.as_cpu()
        return [np.array(out[i]) for i in range(len(encoded))]

    def decode(self, paths: Sequence[str], shapes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Decode whole images.

        Args:
            paths: the files.
            shapes: the (height, width) each header announced.

        Returns:
            one array per path, (height, width, n_channels) of ``dtype``.

        Raises:
            DecodeError: naming the first file that cannot be decoded, or whose decoded
                size differs from its header.
        """
        results: list[np.ndarray] = []
        for start in range(0, len(paths), self.max_batch):
            chunk = list(paths[start : start + self.max_batch])
            encoded = [_read_bytes(p) for p in chunk]
            try:
                decoded = self._run(encoded)
            except Exception:
                self._pipe = self._build()
                decoded = [self._decode_one(p, e) for p, e in zip(chunk, encoded)]
            for path, image, shape in zip(chunk, decoded, shapes[start : start + self.max_batch]):
                if image.shape[:2] != tuple(shape) or image.dtype != self.dtype:
                    raise DecodeError(path, f"decoded {image.shape} {image.dtype}, expected "
                                            f"{tuple(shape)} {self.dtype} from its header")
                if self.verify or not image.any():
                    _check_with_tifffile(path, image, self.n_channels)
            results += decoded
        return results

    def _decode_one(self, path: str, encoded: np.ndarray) -> np.ndarray:
        try:
            return self._run([encoded])[0]
        except Exception as err:
            self._pipe = self._build()
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise DecodeError(path, reason) from None


def _read_bytes(path: str) -> np.ndarray:
    try:
        return np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise DecodeError(path, f"cannot read the file: {err.strerror}") from None


def _check_with_tifffile(path: str, image: np.ndarray, n_channels: int) -> None:
    """Raise DecodeError if tifffile cannot decode ``path`` or gives other pixels than ``image``."""
    import tifffile

    try:
        pixels = tifffile.imread(path, key=0)
    except Exception as err:
        raise DecodeError(path, f"{type(err).__name__}: {err}") from None
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if n_channels == 3:
        pixels = pixels[..., :3]
    elif pixels.shape[-1] != 1:
        return  # DALI's luma conversion has no exact twin here; the decode itself succeeded
    if pixels.shape != image.shape or not np.array_equal(pixels, image):
        raise DecodeError(path, "DALI's decoder and tifffile disagree on its pixels; the file may be damaged")
