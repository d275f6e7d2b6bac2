"""``model.fit(loader.as_pydataset())``: anything with ``__len__``, ``__getitem__`` and
``on_epoch_end`` as a Keras ``PyDataset``, like the old ``keras.utils.Sequence``.

This runs the numpy path batch by batch in Keras's own loop; ``loader.dataset()`` is the faster
hand-off, with DALI prefetching through the TensorFlow plugin.
"""

from __future__ import annotations

from typing import Any, Protocol

import keras


class BatchSource(Protocol):
    """What the adapter needs: batches by index, and a call at each epoch's end."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...

    def on_epoch_end(self) -> None: ...


class SourceDataset(keras.utils.PyDataset):
    """A ``PyDataset`` over ``source``: batch i of its current epoch, and ``on_epoch_end`` passed on.

    Keras 3's ``fit`` also calls ``on_epoch_end`` once before its first epoch, as it does for any
    ``PyDataset``: fit's first epoch is then the source's next one. With dalidw's loader every epoch
    is still a whole, fresh permutation, reproducible from the seed.
    """

    def __init__(self, source: BatchSource):
        super().__init__(workers=1, use_multiprocessing=False)
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Any:
        return self.source[index]

    def on_epoch_end(self) -> None:
        self.source.on_epoch_end()
