"""On a GPU: the same graph gives the same batches as on the CPU, from frames cut on the GPU into
one contiguous device buffer per batch, with the device memory bounded (skipped without a GPU)."""

import gc

import numpy as np
import pytest

from dalidw import SequenceDataLoader
from dalidw.pipeline import GPU_GRAPH_THREADS

from .conftest import YEARS, make_dataset

pytestmark = pytest.mark.gpu


def test_gpu_batches_equal_cpu_batches(dataset):
    kw = dict(dim=(24, 32), batch_size=4, random_seed=3)
    cpu = SequenceDataLoader(YEARS, dataset.table, dataset.image_dir, device="cpu", **kw)
    gpu = SequenceDataLoader(YEARS, dataset.table, dataset.image_dir, device="gpu", **kw)
    assert gpu.feed.frames_on_device and gpu.feed.spec.num_threads == GPU_GRAPH_THREADS
    for i in range(len(cpu)):
        assert cpu.tile_ids(i).tolist() == gpu.tile_ids(i).tolist()
        (xc, yc), (xg, yg) = cpu[i], gpu[i]
        np.testing.assert_allclose(xg, xc, atol=1e-5)
        np.testing.assert_array_equal(yg, yc)


def test_a_gpu_shard_keeps_cutting_on_the_gpu(dataset):
    gpu = SequenceDataLoader(YEARS, dataset.table, dataset.image_dir, device="gpu", dim=(16, 16), batch_size=4)
    part = gpu.shard(1, 2)
    assert part.feed.frames_on_device and part.feed.device_store is gpu.feed.device_store
    cpu = SequenceDataLoader(YEARS, dataset.table, dataset.image_dir, device="cpu", dim=(16, 16), batch_size=4)
    np.testing.assert_allclose(part[0][0], cpu.shard(1, 2)[0][0], atol=1e-5)


def test_run_ahead_on_the_gpu_holds_device_memory_to_the_tiles_and_a_few_batches(tmp_path):
    import cupy as cp

    from dalidw.runahead import RunAhead

    ds = make_dataset(tmp_path, regions=4, size=(512, 512), tiles_per_region=64, tile_size=(40, 45))
    gc.collect()
    cp.get_default_memory_pool().free_all_blocks()
    free, total = cp.cuda.runtime.memGetInfo()
    before = total - free  # what other tests' pools still hold
    gpu = SequenceDataLoader(YEARS, ds.table, ds.image_dir, device="gpu", dim=(64, 64), batch_size=64)
    cpu = SequenceDataLoader(YEARS, ds.table, ds.image_dir, device="cpu", dim=(64, 64), batch_size=64)
    run = RunAhead(gpu.feed)
    for step in range(50):
        x, _ = run(step)
        if step < len(cpu):
            np.testing.assert_allclose(x.as_cpu().as_array(), cpu[step][0], atol=1e-5)
    cp.cuda.runtime.deviceSynchronize()
    free, total = cp.cuda.runtime.memGetInfo()
    resident = gpu.feed.device_store.cache.nbytes
    assert resident > 0
    used = total - free - before
    assert used <= resident + (2 << 30), f"{used / 2**30:.2f} GiB more in use for {resident} bytes of tiles"


def test_gpu_dataset_equals_gpu_loader(dataset):
    tf = pytest.importorskip("tensorflow")
    if not tf.config.list_physical_devices("GPU"):
        pytest.skip("TensorFlow sees no GPU")
    ld = SequenceDataLoader(YEARS, dataset.table, dataset.image_dir, device="gpu", dim=(16, 16), batch_size=4)
    for i, (x, _y) in enumerate(ld.dataset().take(len(ld))):
        assert "GPU" in x.device
        np.testing.assert_allclose(x.numpy(), ld[i][0], atol=1e-6)


@pytest.mark.parametrize("n_bands, dtype, options", [
    (5, "uint16", {"bands": [4, 1, 0], "scale": 10000, "mean": 0.1, "std": 0.5}),
    (9, "float32", {"bands": [0, 8]}),
    (1, "uint8", {"num_classes": 6, "augment": True}),
])
def test_gpu_real_data_options_equal_cpu(tmp_path, n_bands, dtype, options):
    ds = make_dataset(tmp_path, bands=n_bands, dtype=dtype, classes=6 if "num_classes" in options else 0)
    kw = dict(dim=(16, 16), batch_size=4, random_seed=3, **options)
    cpu = SequenceDataLoader(YEARS, ds.table, ds.image_dir, device="cpu", **kw)
    gpu = SequenceDataLoader(YEARS, ds.table, ds.image_dir, device="gpu", **kw)
    for i in range(len(cpu)):
        np.testing.assert_allclose(gpu[i][0], cpu[i][0], atol=1e-5)


def test_the_pydataset_gives_jax_arrays_on_the_loaders_gpu(dataset):
    jax = pytest.importorskip("jax")
    try:
        jax.devices("gpu")
    except RuntimeError:
        pytest.skip("JAX sees no GPU")
    gpu = SequenceDataLoader(YEARS, dataset.table, dataset.image_dir, device="gpu", dim=(16, 16), batch_size=4)
    cpu = SequenceDataLoader(YEARS, dataset.table, dataset.image_dir, device="cpu", dim=(16, 16), batch_size=4)
    data = gpu.as_pydataset(backend="jax")
    for i in range(len(cpu)):
        x, y = data[i]
        assert isinstance(x, jax.Array) and next(iter(x.devices())).platform == "gpu"
        np.testing.assert_allclose(np.asarray(x), cpu[i][0], atol=1e-5)
        np.testing.assert_array_equal(np.asarray(y), cpu[i][1])


def test_every_graph_operator_runs_on_the_gpu(dataset):
    from dalidw.pipeline import build_pipeline, placement

    ld = SequenceDataLoader(YEARS, dataset.table, dataset.image_dir, device="gpu", dim=(8, 8), batch_size=2,
                            augment=True)
    nodes = []
    pipe = build_pipeline(ld.feed.spec, nodes=nodes)
    ops = placement(nodes)
    assert ops and all(device == "gpu" for _, device in ops), ops
    del pipe
