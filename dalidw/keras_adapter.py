"""``model.fit(loader.as_pydataset())``: anything with ``__len__``, ``__getitem__`` and an ``epoch``
as a Keras ``PyDataset``, like the old ``keras.utils.Sequence``.

This runs the numpy path batch by batch in Keras's own loop; ``loader.dataset()`` is the faster
hand-off, with DALI prefetching through the TensorFlow plugin.
"""

from __future__ import annotations

from typing import Any, Protocol

import keras


class BatchSource(Protocol):
    """What the adapter needs: batches by index of the epoch set in ``epoch``."""

    epoch: int

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


class SourceDataset(keras.utils.PyDataset):
    """A ``PyDataset`` over ``source`` whose k-th epoch in ``fit`` reads the source's epoch
    ``start_epoch + k``.

    Keras tells a ``PyDataset`` when an epoch begins and ends, but not which epoch of ``fit`` it
    is (``initial_epoch`` never reaches it), and calls ``on_epoch_end`` once more before the first
    epoch. So the adapter counts the epochs it has begun: ``on_epoch_begin`` sets
    ``source.epoch = start_epoch + epochs begun before``, and ``on_epoch_end`` sets it to the next
    one. To resume at fit's epoch k, build it with ``start_epoch=k`` and pass ``initial_epoch=k``.
    """

    def __init__(self, source: BatchSource, start_epoch: int = 0):
        super().__init__(workers=1, use_multiprocessing=False)
        self.source = source
        self.start_epoch = start_epoch
        self.epochs_begun = 0

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Any:
        return self.source[index]

    def on_epoch_begin(self) -> None:
        self.source.epoch = self.start_epoch + self.epochs_begun
        self.epochs_begun += 1

    def on_epoch_end(self) -> None:
        self.source.epoch = self.start_epoch + self.epochs_begun
