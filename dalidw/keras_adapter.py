"""``model.fit(loader.as_pydataset())``: the loader as a Keras ``PyDataset`` on every Keras backend.

Batch i of fit's k-th epoch is the loader's batch i of epoch ``start_epoch + k``, run by the DALI
graph a few batches ahead (``runahead.RunAhead``) on a thread of its own and handed over as arrays of the active backend
on the graph's device without a copy (``arrays``): JAX and PyTorch get their arrays on the same
GPU, every backend NumPy arrays from a graph on the CPU.
"""

from __future__ import annotations

from typing import Any, Protocol

import keras

from .arrays import check_backend, converter
from .feed import BatchFeed
from .prefetch import Prefetch
from .runahead import RunAhead


class BatchSource(Protocol):
    """What the adapter needs: batches by index of the epoch set in ``epoch``."""

    epoch: int

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


class FeedBatches:
    """Batch ``index`` of epoch ``epoch`` of a feed as arrays of a Keras ``backend``, the graph run
    ahead over consecutive batches (and epochs), and the host's share of each batch done on a
    thread of its own (``prefetch.Prefetch``), so that asked in order (``fit(..., shuffle=False)``)
    a batch is ready when the training step asks for it.

    Args:
        feed: the batch feed.
        backend: the Keras backend whose arrays to give ("jax", "torch", "tensorflow", "numpy").
    """

    def __init__(self, feed: BatchFeed, backend: str):
        self.epoch = 0
        self.feed = feed
        self.convert = converter(check_backend(backend), feed.spec.device, feed.spec.device_id)
        self._prefetch: Prefetch | None = None

    def __len__(self) -> int:
        return len(self.feed)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        if self._prefetch is None:
            run, convert = RunAhead(self.feed), self.convert

            def make(step: int) -> tuple[Any, Any]:
                x, y = run(step)
                return convert(x), convert(y)

            self._prefetch = Prefetch(make)
        return self._prefetch(self.epoch * len(self.feed) + int(index))


class SourceDataset(keras.utils.PyDataset):
    """A ``PyDataset`` over ``source`` whose k-th epoch in ``fit`` reads the source's epoch
    ``start_epoch + k``.

    Keras tells a ``PyDataset`` when an epoch begins and ends, but not which epoch of ``fit`` it
    is (``initial_epoch`` never reaches it). It also calls ``on_epoch_end`` once before the first
    epoch (TensorFlow's trainer), and the JAX and PyTorch trainers begin an epoch to read one batch
    for building the model, then end it. So the adapter counts the epochs that were read: an epoch
    counts once it has read two batches (or every batch, of a one-batch dataset), and
    ``on_epoch_begin`` sets ``source.epoch = start_epoch + epochs counted``; ``on_epoch_end`` sets
    it to the next one after an epoch that counts. To resume at fit's epoch k, build it with
    ``start_epoch=k`` and pass ``initial_epoch=k``. (With one batch per epoch, the build's read
    cannot be told from an epoch: there the JAX and PyTorch trainers start one epoch later.)
    ``loader``, where given (the loader the source reads), follows ``source.epoch``, so that after
    fit it is at the next epoch.
    """

    def __init__(self, source: BatchSource, *, start_epoch: int = 0, loader: Any = None):
        super().__init__(workers=1, use_multiprocessing=False)
        self.source = source
        self.loader = loader
        self.start_epoch = start_epoch
        self.epochs_read = 0
        self._reads: int | None = None  # batches read since on_epoch_begin; None outside an epoch

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Any:
        if self._reads is not None:  # TensorFlow's adapter also reads two batches up front, for their shapes
            self._reads += 1
        return self.source[index]

    def on_epoch_begin(self) -> None:
        self._reads = 0
        self._set_epoch(self.start_epoch + self.epochs_read)

    def on_epoch_end(self) -> None:
        if self._reads is not None and self._reads >= min(2, len(self)):
            self.epochs_read += 1
            self._set_epoch(self.start_epoch + self.epochs_read)
        self._reads = None

    def _set_epoch(self, epoch: int) -> None:
        self.source.epoch = epoch
        if self.loader is not None:
            self.loader.epoch = epoch
