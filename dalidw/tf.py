"""The hand-off to TensorFlow: a feed's DALI graph as a repeating ``tf.data.Dataset`` of (x, y).

Element k is a pure function of k through the feed's (epoch, batch) bookkeeping, so the batches
stay aligned however far ahead TensorFlow or DALI prefetch; the batch dimension is None and a
partial last batch is simply smaller.

- **On the CPU** the graph runs a few batches ahead (``runahead.RunAhead``) and each output batch
  becomes a TensorFlow tensor through DLPack, sharing DALI's buffer: no copy of the output. (DALI's
  TensorFlow plugin copies every output batch into a tensor TensorFlow allocates anew, 88 MB for
  256 samples of 7x64x64x3, which costs more than DALI's whole graph on a 2-core machine.)
- **On the GPU** DALI's TensorFlow plugin (``DALIDatasetWithInputs``) runs the graph, so the
  outputs are born on the GPU; the plugin takes host inputs only, so each batch's frames are cut
  on the host (one gather from the region's tile blocks) and copied over.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from .devices import dataset_device, share_tensorflow_gpu
from .errors import OptionError
from .feed import BatchFeed, per_replica_batch
from .pipeline import FLIP_H, FLIP_V, FRAMES, SHAPE, TARGET, TRANSPOSE, build_pipeline
from .runahead import RunAhead

#: TensorFlow releases the DALI plugin ships prebuilt for, as (major, minor).
SUPPORTED_TF = ((2, 20), (2, 21))

PLUGIN_HINT = (
    "The DALI TensorFlow plugin is missing. Install it after TensorFlow and DALI:\n"
    "  pip install --no-build-isolation nvidia-dali-tf-plugin-cuda120\n"
    "(or run `make setup`). It ships prebuilt for TensorFlow "
    + " and ".join(f"{a}.{b}" for a, b in SUPPORTED_TF) + "."
)


def import_plugin():
    """Import TensorFlow and the DALI plugin, or fail saying what to install."""
    try:
        import tensorflow as tf
    except ImportError:
        raise ImportError("TensorFlow is not installed: pip install 'tensorflow>=2.20,<2.22'") from None
    try:
        from nvidia.dali.plugin import tf as dali_tf
    except ImportError as err:
        raise ImportError(f"{PLUGIN_HINT}\n(import failed: {err})") from None
    if not dali_tf.dataset_inputs_compatible_tensorflow():
        raise ImportError(f"TensorFlow {tf.__version__} is too old for DALI dataset inputs; {PLUGIN_HINT}")
    return tf, dali_tf


def make_dataset(feed: BatchFeed, *, start_epoch: int = 0, placement: str | None = None, device_fixed: bool = False,
                 plugin: bool | None = None):
    """The repeating (x, y) dataset of ``feed``'s graph, from epoch ``start_epoch`` on.

    Args:
        placement: the TensorFlow device of the plugin's DALI dataset (default: the graph's device).
        device_fixed: the user named the feed's device; where TensorFlow sees no GPU, a GPU feed is
            then an error rather than a dataset on the CPU (``devices.dataset_device``).
        plugin: run the graph in DALI's TensorFlow plugin; None: on the GPU only (on the CPU the
            plugin's output copy costs more than the graph: see the module docstring).
    """
    tf, dali_tf = import_plugin()
    if feed.spec.device == "gpu":
        gpus = len(tf.config.list_physical_devices("GPU"))
        if dataset_device("gpu", gpus, device_fixed=device_fixed) == "cpu":
            feed = feed.moved(device="cpu")
    if not (feed.spec.device == "gpu" if plugin is None else plugin):
        return _host_dataset(tf, feed, start_epoch)
    if feed.spec.device == "gpu":
        share_tensorflow_gpu(tf)
        feed = feed.moved(host_frames=True)
    spec = feed.spec
    device = placement or (f"/gpu:{spec.device_id}" if spec.device == "gpu" else "/cpu:0")
    signatures = _signatures(tf, feed)
    inputs = {}
    with tf.device("/cpu:0"):
        for name in spec.inputs:
            inputs[name] = _input_dataset(tf, feed, name, start_epoch, signatures[name])
    with tf.device(device):
        input_datasets = {}
        for name, ds in inputs.items():
            if spec.device == "gpu":
                ds = ds.apply(tf.data.experimental.copy_to_device(device))
            input_datasets[name] = dali_tf.experimental.Input(ds, layout="FHWC" if name == FRAMES else None,
                                                              batch=True)
        return dali_tf.experimental.DALIDatasetWithInputs(
            pipeline=build_pipeline(spec),
            input_datasets=input_datasets,
            batch_size=spec.batch_size,
            output_shapes=spec.output_shapes(),
            output_dtypes=(tf.float32, tf.float32),
            device_id=spec.device_id,
            num_threads=spec.num_threads,
        )


def _host_dataset(tf, feed: BatchFeed, start_epoch: int):
    """The CPU graph's batches, step k from ``RunAhead``, as TensorFlow tensors that share DALI's
    output buffers (DLPack). One ``RunAhead`` per dataset, made on the first element; a new
    iterator of the dataset starts at step 0, which the runner follows by starting over (iterators
    read it in turn, under a lock). The Python function runs only when an element is asked for."""
    runners: list[RunAhead] = []
    lock = threading.Lock()  # two iterators of the dataset may ask from two TensorFlow threads
    x_shape, y_shape = feed.spec.output_shapes()

    def batch(step):
        with lock:
            if not runners:
                runners.append(RunAhead(feed, start_epoch=start_epoch))
            x, y = runners[0](int(step))
        return _from_dali(tf, x), _from_dali(tf, y)

    def element(step):
        x, y = tf.py_function(batch, [step], (tf.float32, tf.float32))
        return tf.ensure_shape(x, x_shape), tf.ensure_shape(y, y_shape)

    options = tf.data.Options()
    # No prefetch thread of TensorFlow's (DALI already works ahead): one inside the Python function
    # when Python exits would wait for the interpreter lock that the exiting thread holds.
    options.experimental_optimization.inject_prefetch = False
    return tf.data.Dataset.counter().map(element).with_options(options)


def _from_dali(tf, batch):
    """A DALI CPU tensor list as a TensorFlow tensor sharing its buffer (DLPack; DALI's buffer lives
    as long as the tensor)."""
    return tf.experimental.dlpack.from_dlpack(batch.as_tensor().__dlpack__())


def _input_dataset(tf, feed: BatchFeed, name: str, start_epoch: int, signature):
    """Input ``name`` of batch after batch from ``start_epoch`` on: element k is a pure function of k
    (epoch ``start_epoch + k // len(feed)``, batch ``k % len(feed)``).

    A counter mapped through ``numpy_function`` rather than ``from_generator``: nothing is left to
    finalize in Python when an iterator outlives the interpreter (``from_generator`` then logs
    "Error occurred when finalizing GeneratorDataset iterator ... [[{{node PyFunc}}]]").
    """
    batches = len(feed)

    def batch_input(step: np.int64) -> np.ndarray:
        epoch, index = divmod(int(step), batches)
        frames = feed.new_frames(int(feed.order.batch_sizes[index]), host=True) if name == FRAMES else None
        return np.asarray(feed.inputs(start_epoch + epoch, index, (name,), frames=frames)[name])

    def element(step):
        value = tf.numpy_function(batch_input, [step], signature.dtype, stateful=True)
        return tf.ensure_shape(value, signature.shape)

    return tf.data.Dataset.counter().map(element)


def _signatures(tf, feed: BatchFeed) -> dict[str, Any]:
    spec = feed.spec
    return {
        FRAMES: tf.TensorSpec(spec.frames_shape(), tf.as_dtype(np.dtype(spec.input_dtype))),
        SHAPE: tf.TensorSpec((None, 2), tf.int32),
        TRANSPOSE: tf.TensorSpec((None,), tf.bool),
        FLIP_H: tf.TensorSpec((None,), tf.int32),
        FLIP_V: tf.TensorSpec((None,), tf.int32),
        TARGET: tf.TensorSpec((None, *spec.y_shape), tf.float32),
    }


def _replica_device(tf, device: str) -> tuple[str, int | None, str]:
    """A replica's TensorFlow device name -> (graph device, device id, TensorFlow placement)."""
    spec = tf.DeviceSpec.from_string(device)
    kind = (spec.device_type or "CPU").upper()
    index = spec.device_index or 0
    if kind == "GPU":
        return "gpu", index, f"/device:GPU:{index}"
    return "cpu", None, f"/device:CPU:{index}"


def distribute(feed: BatchFeed, strategy, *, start_epoch: int = 0, device_fixed: bool = False):
    """A distributed dataset of per-replica shards of ``feed`` (whose batch is the global batch).

    Each replica's graph runs on the replica's device. ``device_fixed``: the user chose the feed's
    device explicitly; a replica on another kind of device is then an error, not a silent switch.
    """
    tf, _ = import_plugin()
    feed.check_unsharded("distributed_dataset()")
    per_replica = per_replica_batch(feed.spec.batch_size, int(strategy.num_replicas_in_sync))
    devices = list(strategy.extended.worker_devices)
    placements = [_replica_device(tf, d) for d in devices]
    if device_fixed and any(kind != feed.spec.device for kind, _, _ in placements):
        kinds = sorted({kind for kind, _, _ in placements})
        raise OptionError(f"device={feed.spec.device!r} was asked for, but the strategy's replicas are on "
                         f"{' and '.join(kinds)} devices; leave `device` at 'auto' to follow the replicas")
    mirrored = isinstance(strategy, tf.distribute.MirroredStrategy)
    if not mirrored and len(devices) != 1:
        raise OptionError(f"{type(strategy).__name__} with {len(devices)} replicas in this worker: dalidw runs one "
                         "pipeline per worker, so each worker must hold one replica (one GPU per process)")

    def shard_dataset(context):
        kind, device_id, placement = placements[context.input_pipeline_id if mirrored else 0]
        part = feed.for_shard(context.input_pipeline_id, context.num_input_pipelines, batch_size=per_replica,
                              device=kind, device_id=device_id, host_frames=True)  # the plugin's host inputs
        with tf.device(placement):
            return make_dataset(part, start_epoch=start_epoch, placement=placement, device_fixed=device_fixed)

    if not mirrored:
        return strategy.distribute_datasets_from_function(shard_dataset)
    options = tf.distribute.InputOptions(
        experimental_place_dataset_on_device=True,
        experimental_fetch_to_device=False,
        experimental_replication_mode=tf.distribute.InputReplicationMode.PER_REPLICA)
    return strategy.distribute_datasets_from_function(shard_dataset, options)
