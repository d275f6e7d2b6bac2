"""DALI's output batches as arrays of a Keras backend, on the device DALI made them on, without a copy.

A batch on the CPU becomes a NumPy array that shares DALI's buffer (every backend's Keras takes
NumPy). A batch on the GPU becomes, through DLPack, a ``jax.Array`` (JAX) or a ``torch.Tensor``
(PyTorch) on the same GPU, sharing DALI's buffer; Keras's trainers of those backends pass such
arrays to the training step as they are. TensorFlow's Keras reads a ``PyDataset`` through
``tf.data.Dataset.from_generator``, which takes host arrays only, so there a GPU batch is copied to
the host (``loader.dataset()`` is TensorFlow's way, with no such copy). DALI's buffer lives as long
as the array does.

No framework is imported unless its backend is asked for.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import DeviceUnavailableError, OptionError

BACKENDS = ("tensorflow", "jax", "torch", "numpy")
#: What to install for each backend's GPU build.
GPU_INSTALL = {
    "jax": "pip install 'jax[cuda12]' (or 'jax[cuda13]' for CUDA 13 drivers)",
    "torch": "pip install torch (a CUDA build, from pytorch.org)",
}
#: What to install for each backend where it is missing.
INSTALL = {
    "jax": f"pip install 'dalidw[jax]' (jax[cpu]; on a GPU: {GPU_INSTALL['jax']})",
    "torch": "pip install torch",
    "tensorflow": "pip install 'tensorflow>=2.20,<2.22'",
}


def check_backend(name: str) -> str:
    """``name`` as one of ``BACKENDS``, installed.

    Raises:
        OptionError: another name, or its package is not installed (the message says what to install).
    """
    if name not in BACKENDS:
        raise OptionError(f"Expected a Keras backend in {list(BACKENDS)}. Received: {name!r}")
    package = {"numpy": "numpy"}.get(name, name)
    if importlib.util.find_spec(package) is None:
        raise OptionError(f"The Keras backend {name!r} is not installed: {INSTALL[name]}")
    return name


def converter(backend: str, device: str, device_id: int | None) -> Callable[[Any], Any]:
    """A function from one DALI output batch (a dense tensor list) to an array of ``backend``, for a
    graph on ``device`` (GPU ``device_id``).

    Raises:
        DeviceUnavailableError: a GPU graph, and the backend sees no GPU, or not that one.
    """
    if device == "cpu":
        return _host_view
    if backend == "jax":
        _check_jax_gpu(device_id)
        import jax.dlpack

        return lambda batch: jax.dlpack.from_dlpack(batch.as_tensor())
    if backend == "torch":
        _check_torch_gpu(device_id)
        import torch

        return lambda batch: torch.from_dlpack(batch.as_tensor())
    return lambda batch: _host_view(batch.as_cpu())


def _host_view(batch: Any) -> np.ndarray:
    """A DALI CPU tensor list as a NumPy array sharing its buffer (which lives as long as the array)."""
    return np.asarray(batch.as_tensor())


def _check_jax_gpu(device_id: int | None) -> None:
    """Raise unless JAX's default device is GPU ``device_id``, where Keras's JAX trainer steps."""
    import jax

    try:
        gpus = jax.devices("gpu")
    except RuntimeError:  # JAX's error where it has no GPU backend (a CPU-only jaxlib)
        raise DeviceUnavailableError(f"The loader's graph runs on GPU {device_id}, but JAX sees no GPU (a CPU-only "
                                     f"jaxlib): {GPU_INSTALL['jax']}; or build the loader with device='cpu'.") from None
    default = jax.devices()[0]
    if default.platform != "gpu" or default.id != device_id:
        raise DeviceUnavailableError(
            f"The loader's graph runs on GPU {device_id}, but JAX computes on {default} (of {len(gpus)} GPU(s)): "
            f"build the loader with device='gpu:{default.id}', or make GPU {device_id} JAX's default "
            "(CUDA_VISIBLE_DEVICES).")


def _check_torch_gpu(device_id: int | None) -> None:
    """Raise unless PyTorch sees GPU ``device_id``."""
    import torch

    if not torch.cuda.is_available() or device_id >= torch.cuda.device_count():
        raise DeviceUnavailableError(f"The loader's graph runs on GPU {device_id}, but PyTorch sees "
                                     f"{torch.cuda.device_count() if torch.cuda.is_available() else 'no'} GPU(s): "
                                     f"{GPU_INSTALL['torch']}; or build the loader with device='cpu'.")
    if torch.cuda.current_device() != device_id:
        raise DeviceUnavailableError(
            f"The loader's graph runs on GPU {device_id}, but PyTorch computes on GPU {torch.cuda.current_device()}: "
            f"build the loader with device='gpu:{torch.cuda.current_device()}', or call "
            f"torch.cuda.set_device({device_id}) first.")
