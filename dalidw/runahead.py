"""RunAhead: a feed's graph run over consecutive steps of its epochs, a few batches ahead.

Step k is batch ``k % len(feed)`` of epoch ``start_epoch + k // len(feed)``: a pure function of k,
as every path of the loader has it. Asked for step k, the graph already holds the inputs of the
next ``depth`` steps, so DALI works on them while the caller uses step k. On the GPU each batch's
frames are cut into one of ``depth + 2`` reusable device buffers, on the feed's CUDA stream, and
handed to DALI with that stream (no host wait); a buffer is written again only once the step that
read it has been returned (DALI reads an input without copying it until ``prefetch_queue_depth``
iterations after it was fed). On the CPU DALI reads the tiles' own arrays. The inputs of every step
in DALI's queue are held until it is returned.

The outputs are DALI's own tensor lists on the graph's device: the adapters (``tf.py``,
``keras_adapter.py``) hand them to a framework without a copy (DLPack). By default they are
host-synchronous: ``run`` returns once the batch is done, while the next ``depth`` are in work. With
``outputs_stream`` (a CuPy stream) they are bound to that stream instead and the host does not wait
for the GPU at all; an event recorded on it after each step then tells the cut of a later batch
when DALI is done reading the buffer it reuses.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from .feed import BatchFeed
from .pipeline import build_pipeline, feed_batch

#: Batches DALI holds ahead of the one asked for (its prefetch queue depth), by the graph's device.
#: On an H200, 2 and 3 are within run-to-run noise (178,219 and 241,830 samples/s in one run,
#: 191,787 and 182,571 in the next; bench/results/gpu-check-h200*.json); 3 costs one more output
#: batch of device memory. On the CPU, DALI's threads already fill the cores at 2.
DEPTH = {"cpu": 2, "gpu": 3}


class RunAhead:
    """Batches of ``feed``'s graph for consecutive steps, from epoch ``start_epoch`` on.

    Args:
        feed: the batch feed (its graph, device and order).
        start_epoch: the epoch of step 0.
        depth: batches the graph works ahead (``prefetch_queue_depth``); None: ``DEPTH`` of the
            graph's device.
        outputs_stream: a CuPy stream to bind a GPU graph's outputs to (no host wait); None:
            host-synchronous outputs.

    Asking for steps out of sequence is allowed and correct, only slower: the graph starts over.
    """

    def __init__(self, feed: BatchFeed, *, start_epoch: int = 0, depth: int | None = None,
                 outputs_stream: Any = None):
        self.feed, self.start_epoch = feed, int(start_epoch)
        self.depth = int(depth) if depth is not None else DEPTH[feed.spec.device]
        self.outputs_stream = outputs_stream
        # on the GPU each batch's frames go into a reused device buffer; on the CPU DALI reads the tiles' own arrays
        self._buffers = [feed.new_frames(feed.spec.batch_size) if feed.frames_on_device else None
                         for _ in range(self.depth + 2)]
        self._read: list[Any] = [None] * len(self._buffers)  # per buffer: the event after the step that read it
        self._pipe = None
        self._fed: deque[dict[str, Any]] = deque()  # inputs DALI may still read, oldest first
        self._next: int | None = None  # the step the graph's queue starts with

    def __call__(self, step: int) -> tuple[Any, Any]:
        """(x, y) of step ``step`` as DALI tensor lists on the graph's device.

        Raises:
            DataError: a batch's region cannot be decoded (at or before the step that needs it).
        """
        step = int(step)
        if step != self._next:
            self._start(step)
        try:
            if self.outputs_stream is None:
                x, y = self._pipe.run()
            else:
                x, y = self._pipe.run(self.outputs_stream)
                if self.feed.stream is not None:  # frames cut on the GPU, into buffers that are reused
                    self._read[step % len(self._buffers)] = self.outputs_stream.record()
            self._fed.popleft()
            self._next = step + 1
            self._give(step + self.depth)
        except BaseException:
            self._next = None  # the queue no longer matches the steps: start over when asked again
            raise
        return x, y

    def _start(self, step: int) -> None:
        """A new graph whose queue holds the inputs of ``step`` and the ``depth - 1`` after it."""
        self._pipe = build_pipeline(self.feed.spec, prefetch_queue_depth=self.depth)
        self._pipe.build()
        self._fed.clear()
        self._next = None
        for ahead in range(step, step + self.depth):
            self._give(ahead)
        self._next = step

    def _give(self, step: int) -> None:
        """Feed the inputs of ``step`` into the graph, its frames cut into the step's buffer."""
        epoch, index = divmod(step, len(self.feed))
        size = int(self.feed.order.batch_sizes[index])
        slot = step % len(self._buffers)
        if self._read[slot] is not None:  # the cut waits (on the GPU) until DALI is done reading the buffer
            self.feed.stream.wait_event(self._read[slot])
            self._read[slot] = None
        buffer = self._buffers[slot]
        inputs = self.feed.inputs(self.start_epoch + epoch, index, frames=None if buffer is None else buffer[:size])
        feed_batch(self._pipe, inputs, cuda_stream=self.feed.stream)
        self._fed.append(inputs)
