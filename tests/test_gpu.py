"""On a GPU: the same graph gives the same batches as on the CPU (skipped without a GPU)."""

import numpy as np
import pytest

from dalidw import SequenceDataLoader
from dalidw.pipeline import GPU_GRAPH_THREADS

from .conftest import YEARS

pytestmark = pytest.mark.gpu


def test_gpu_batches_equal_cpu_batches(dataset):
    kw = dict(dim=(24, 32), batch_size=4, random_seed=3)
    cpu = SequenceDataLoader(YEARS, dataset.table, dataset.image_dir, device="cpu", **kw)
    gpu = SequenceDataLoader(YEARS, dataset.table, dataset.image_dir, device="gpu", **kw)
    assert gpu.feed.spec.source == "regions" and gpu.feed.spec.num_threads == GPU_GRAPH_THREADS
    for i in range(len(cpu)):
        assert cpu.tile_ids(i).tolist() == gpu.tile_ids(i).tolist()
        (xc, yc), (xg, yg) = cpu[i], gpu[i]
        np.testing.assert_allclose(xg, xc, atol=1e-5)
        np.testing.assert_array_equal(yg, yc)


def test_gpu_dataset_equals_gpu_loader(dataset):
    pytest.importorskip("tensorflow")
    ld = SequenceDataLoader(YEARS, dataset.table, dataset.image_dir, device="gpu", dim=(16, 16), batch_size=4)
    got = list(ld.dataset().take(len(ld)).as_numpy_iterator())
    for i, (x, _y) in enumerate(got):
        np.testing.assert_allclose(x, ld[i][0], atol=1e-6)


@pytest.mark.parametrize("n_bands, dtype, options", [
    (5, "uint16", {"bands": [4, 1, 0], "scale": 10000, "mean": 0.1, "std": 0.5}),
    (9, "float32", {"bands": [0, 8]}),
    (1, "uint8", {"num_classes": 6, "augment": True}),
])
def test_gpu_real_data_options_equal_cpu(tmp_path, n_bands, dtype, options):
    from .conftest import make_dataset

    ds = make_dataset(tmp_path, bands=n_bands, dtype=dtype, classes=6 if "num_classes" in options else 0)
    kw = dict(dim=(16, 16), batch_size=4, random_seed=3, **options)
    cpu = SequenceDataLoader(YEARS, ds.table, ds.image_dir, device="cpu", **kw)
    gpu = SequenceDataLoader(YEARS, ds.table, ds.image_dir, device="gpu", **kw)
    for i in range(len(cpu)):
        np.testing.assert_allclose(gpu[i][0], cpu[i][0], atol=1e-5)


@pytest.mark.parametrize("target", ["target", "last-image"])
def test_gpu_dataset_of_uniform_boxes_arrives_on_the_gpu_and_equals_the_loader(tmp_path, target):
    tf = pytest.importorskip("tensorflow")
    if not tf.config.list_physical_devices("GPU"):
        pytest.skip("TensorFlow sees no GPU")
    from .conftest import make_dataset

    ds = make_dataset(tmp_path, tile_size=(20, 30))
    ld = SequenceDataLoader(YEARS, ds.table, ds.image_dir, device="gpu", dim=(16, 16), batch_size=4, target=target)
    assert ld.feed.spec.source == "regions", "a GPU loader keeps its region stacks on the device"
    dataset = ld.dataset()
    for i, (x, y) in enumerate(dataset.take(len(ld))):
        assert "GPU" in x.device and "GPU" in y.device
        np.testing.assert_allclose(x.numpy(), ld[i][0], atol=1e-6)


def test_every_graph_operator_runs_on_the_gpu():
    from dalidw.pipeline import GraphSpec, build_pipeline, placement

    spec = GraphSpec(batch_size=2, dim=(8, 8), channels=3, frames=3, input_dtype=np.uint8, gain=(1 / 255,) * 3,
                     offset=(0.0,) * 3, interpolation="linear", num_classes=0, split_last=False, target_size=1,
                     device="gpu", device_id=0, num_threads=1, source="regions", turns=True, flips=True)
    nodes = []
    pipe = build_pipeline(spec, nodes=nodes)
    ops = placement(nodes)
    assert ops and all(device == "gpu" for _, device in ops), ops
    del pipe
