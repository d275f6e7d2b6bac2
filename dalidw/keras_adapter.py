"""``model.fit(loader.as_pydataset())``: the loader as a Keras ``PyDataset``, like the old Sequence.

This runs the numpy path (``loader[i]``) batch by batch in Keras's own loop; ``loader.dataset()``
is the faster hand-off, with DALI prefetching through the TensorFlow plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .loader import SequenceDataLoader


def as_pydataset(loader: SequenceDataLoader):
    """A ``keras.utils.PyDataset`` over ``loader``: batch i of the loader's current epoch, and
    ``on_epoch_end`` moving the loader to its next epoch (a new order when shuffling).

    Keras 3's ``fit`` also calls ``on_epoch_end`` once before its first epoch, as it does for any
    ``PyDataset``: fit's first epoch is then the loader's next one. Every epoch is still a whole,
    fresh permutation, reproducible from the seed.
    """
    import keras

    class LoaderDataset(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.loader = loader

        def __len__(self) -> int:
            return len(self.loader)

        def __getitem__(self, index: int):
            return self.loader[index]

        def on_epoch_end(self) -> None:
            self.loader.on_epoch_end()

    return LoaderDataset()
