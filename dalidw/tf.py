"""The hand-off to TensorFlow: the DALI graph as a ``tf.data.Dataset`` through the DALI plugin.

DALI's ``DALIDatasetWithInputs`` takes per-sample ``tf.data`` inputs for the graph's external
sources. Each input is a generator over the loader's own (epoch, batch) bookkeeping, so the
streams stay aligned however far ahead TensorFlow or DALI prefetch. A partial last batch is
padded to a full one for DALI and trimmed again on the TensorFlow side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .pipeline import FRAMES, TARGET, build_pipeline

if TYPE_CHECKING:
    from .loader import SequenceDataLoader

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


def make_dataset(loader: SequenceDataLoader, *, start_epoch: int = 0, placement: str | None = None):
    """The repeating (x, y) dataset of ``loader``, starting at epoch ``start_epoch``.

    ``placement`` is the TensorFlow device of the DALI dataset (default: the loader's GPU, or /cpu:0).
    """
    tf, dali_tf = import_plugin()
    spec = loader._spec()
    batch = spec.batch_size
    frames = spec.frames
    channels = spec.out_channels
    height, width = spec.dim
    in_dtype = tf.as_dtype(spec.input_dtype)

    device = placement or (f"/gpu:{spec.device_id}" if spec.device == "gpu" else "/cpu:0")
    inputs = {}
    box = loader.uniform_box
    dense = box is not None
    with tf.device("/cpu:0"):
        if dense:  # one array per batch: far less per-sample work in TensorFlow's generator
            frame_spec = tf.TensorSpec((batch, frames, *box, spec.channels), in_dtype)
            target_spec = tf.TensorSpec((batch, spec.target_size), tf.float32)
        else:
            frame_spec = tf.TensorSpec((frames, None, None, spec.channels), in_dtype)
            target_spec = tf.TensorSpec((spec.target_size,), tf.float32)
        frames_ds = tf.data.Dataset.from_generator(
            lambda: loader._stream(FRAMES, start_epoch, dense=dense), output_signature=frame_spec)
        inputs[FRAMES] = (frames_ds, "FHWC")
        if not spec.split_last:
            target_ds = tf.data.Dataset.from_generator(
                lambda: loader._stream(TARGET, start_epoch, dense=dense), output_signature=target_spec)
            inputs[TARGET] = (target_ds, None)

    if spec.split_last:
        shapes = ((batch, frames - 1, height, width, channels), (batch, height, width, channels))
    else:
        shapes = ((batch, frames, height, width, channels), (batch, spec.target_size))

    with tf.device(device):
        input_datasets = {}
        for name, (ds, layout) in inputs.items():
            if spec.device == "gpu":
                ds = ds.apply(tf.data.experimental.copy_to_device(device))
            input_datasets[name] = dali_tf.experimental.Input(ds, layout=layout, batch=dense)
        pipe = build_pipeline(spec)
        dataset = dali_tf.experimental.DALIDatasetWithInputs(
            pipeline=pipe,
            input_datasets=input_datasets,
            batch_size=batch,
            output_shapes=shapes,
            output_dtypes=(tf.float32, tf.float32),
            device_id=spec.device_id,
            num_threads=spec.num_threads,
        )
        dataset = _shape_targets(tf, dataset, loader)
        dataset = _trim_batches(tf, dataset, loader.batch_sizes, batch)
    return dataset


def _shape_targets(tf, dataset, loader: SequenceDataLoader):
    if loader.split_last or len(loader.table.target_names) != 1:
        return dataset
    return dataset.map(lambda x, y: (x, tf.reshape(y, [-1])))


def _trim_batches(tf, dataset, sizes, batch: int):
    """Cut the padding off the partial batches of every epoch (``sizes``: tiles per batch of an
    epoch); full batches pass untouched."""
    if all(int(v) == batch for v in sizes):
        return dataset
    table = tf.constant([int(v) for v in sizes], dtype=tf.int64)

    def trim(step, xy):
        x, y = xy
        size = table[step % len(sizes)]
        return tf.cond(size < batch, lambda: (x[:size], y[:size]), lambda: (x, y))

    return dataset.enumerate().map(trim)


def _replica_device(tf, device: str) -> tuple[str, str]:
    """A replica's TensorFlow device name -> (dalidw device, TensorFlow placement)."""
    spec = tf.DeviceSpec.from_string(device)
    kind = (spec.device_type or "CPU").upper()
    index = spec.device_index or 0
    if kind == "GPU":
        return f"gpu:{index}", f"/device:GPU:{index}"
    return "cpu", f"/device:CPU:{index}"


def distribute(loader: SequenceDataLoader, strategy, *, start_epoch: int = 0):
    """``loader.distributed_dataset(strategy)``: a distributed dataset of per-replica shards."""
    tf, _ = import_plugin()
    replicas = int(strategy.num_replicas_in_sync)
    if loader.num_shards != 1:
        raise ValueError("distributed_dataset() shards the loader itself: build it without shard_id/num_shards")
    if loader.batch_size % replicas:
        raise ValueError(f"batch_size={loader.batch_size} is the global batch: it must split evenly over "
                         f"{replicas} replicas")
    per_replica = loader.batch_size // replicas
    devices = list(strategy.extended.worker_devices)

    if isinstance(strategy, tf.distribute.MirroredStrategy):
        def replica_dataset(context):
            device, placement = _replica_device(tf, devices[context.input_pipeline_id])
            part = loader.shard(context.input_pipeline_id, context.num_input_pipelines, batch_size=per_replica,
                                device=device)
            with tf.device(placement):
                return make_dataset(part, start_epoch=start_epoch, placement=placement)

        options = tf.distribute.InputOptions(
            experimental_place_dataset_on_device=True,
            experimental_fetch_to_device=False,
            experimental_replication_mode=tf.distribute.InputReplicationMode.PER_REPLICA)
        return strategy.distribute_datasets_from_function(replica_dataset, options)

    if len(devices) != 1:
        raise ValueError(f"{type(strategy).__name__} with {len(devices)} replicas in this worker: dalidw runs one "
                         "pipeline per worker, so each worker must hold one replica (one GPU per process)")

    def worker_dataset(context):
        device, placement = _replica_device(tf, devices[0])
        part = loader.shard(context.input_pipeline_id, context.num_input_pipelines, batch_size=per_replica,
                            device=device)
        return make_dataset(part, start_epoch=start_epoch)

    return strategy.distribute_datasets_from_function(worker_dataset)
