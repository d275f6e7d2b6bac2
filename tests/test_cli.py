"""The dalidw command as a user runs it: through its console script, in a subprocess."""

import json
import os
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from dalidw.cli import parse_dim, parse_labels


def dalidw(*args, cwd=None, env=None):
    exe = shutil.which("dalidw") or os.path.join(os.path.dirname(sys.executable), "dalidw")
    env = env if env is not None else {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_labels_and_dims_parse():
    assert parse_labels("2016..2019") == [2016, 2017, 2018, 2019]
    assert parse_labels("2016,2018") == [2016, 2018]
    assert parse_dim("32x48") == (32, 48) and parse_dim("64") == (64, 64)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    result = dalidw("synth", out, "--regions", 2, "--size", "96x128", "--tile", "32x32", "--labels", "2016..2018")
    assert result.returncode == 0, result.stderr
    return out


def test_synth_writes_images_and_a_long_table(synth_dir):
    table = pd.read_csv(synth_dir / "tiles.csv")
    assert list(table.columns) == ["tile_id", "region_id", "label_id", "target", "region_coordinates"]
    assert table.tile_id.nunique() == 2 * 3 * 4 and sorted(table.label_id.unique()) == [2016, 2017, 2018]
    assert (synth_dir / "Images" / "2018" / "1001.tif").is_file()


def test_check_passes_on_good_data(synth_dir):
    result = dalidw("check", synth_dir / "tiles.csv", synth_dir / "Images", "--labels", "2016..2018", "--decode")
    assert result.returncode == 0, result.stderr
    assert "no problems found" in result.stdout and "tiles: 24" in result.stdout


def test_check_reports_a_wrong_image_dir_with_exit_code_2(synth_dir):
    result = dalidw("check", synth_dir / "tiles.csv", synth_dir / "nowhere", "--labels", "2016..2018")
    assert result.returncode == 2
    assert "is not a directory" in result.stderr and "Traceback" not in result.stderr


def test_check_reports_a_missing_column(synth_dir, tmp_path):
    pd.read_csv(synth_dir / "tiles.csv").drop(columns="region_coordinates").to_csv(tmp_path / "t.csv", index=False)
    result = dalidw("check", tmp_path / "t.csv", synth_dir / "Images", "--labels", "2016..2018")
    assert result.returncode == 2 and "missing column 'region_coordinates'" in result.stderr


def test_check_reports_an_empty_table(synth_dir, tmp_path):
    pd.read_csv(synth_dir / "tiles.csv").iloc[:0].to_csv(tmp_path / "t.csv", index=False)
    result = dalidw("check", tmp_path / "t.csv", synth_dir / "Images", "--labels", "2016..2018")
    assert result.returncode == 2 and "empty" in result.stderr


def test_show_draws_a_png(synth_dir, tmp_path):
    out = tmp_path / "tile.png"
    result = dalidw("show", synth_dir / "tiles.csv", synth_dir / "Images", "--tile", 3, "-o", out,
                    "--labels", "2016..2018", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_exit_with_2():
    assert dalidw("synth").returncode == 2
    assert dalidw("check", "a.csv", "img", "--labels", "2020..2016").returncode == 2


def test_demo_trains_a_model_that_beats_the_mean(tmp_path):
    result = dalidw("demo", "--epochs", 5, "--device", "cpu", "--out", tmp_path / "demo")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the model beats it" in result.stdout
    for name in ("model.keras", "log.csv", "loss.png", "sample.png"):
        assert (tmp_path / "demo" / name).stat().st_size > 0


def test_show_draws_a_grid_of_a_batch(synth_dir, tmp_path):
    out = tmp_path / "batch.png"
    result = dalidw("show", synth_dir / "tiles.csv", synth_dir / "Images", "--batch", 1, "--batch-size", 5,
                    "--rows", 3, "-o", out, "--labels", "2016..2018", "--device", "cpu", "--dim", "24x32")
    assert result.returncode == 0, result.stderr
    assert "3 tiles of batch 1" in result.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_show_refuses_a_batch_past_the_epoch_and_an_unknown_tile(synth_dir, tmp_path):
    result = dalidw("show", synth_dir / "tiles.csv", synth_dir / "Images", "--batch", 99, "--batch-size", 8,
                    "-o", tmp_path / "b.png", "--labels", "2016..2018", "--device", "cpu")
    assert result.returncode == 2 and "an epoch has 3 batches" in result.stderr
    result = dalidw("show", synth_dir / "tiles.csv", synth_dir / "Images", "--tile", "no-such-tile",
                    "-o", tmp_path / "t.png", "--labels", "2016..2018", "--device", "cpu")
    assert result.returncode == 2 and "no-such-tile" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "b.png").exists() and not (tmp_path / "t.png").exists()


def test_show_needs_a_tile_or_a_batch(synth_dir):
    result = dalidw("show", synth_dir / "tiles.csv", synth_dir / "Images")
    assert result.returncode == 2 and "--tile" in result.stderr


def test_train_reports_a_wrong_image_dir(synth_dir, tmp_path):
    result = dalidw("train", synth_dir / "tiles.csv", tmp_path / "nowhere", "--labels", "2016..2018",
                    "--out", tmp_path / "run")
    assert result.returncode == 2 and "is not a directory" in result.stderr and "Traceback" not in result.stderr


def test_bench_runs_the_benchmark_of_the_source_tree(tmp_path):
    result = dalidw("bench", "--quick", "--only", "floor-write", "--data", tmp_path / "data", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "floor" in result.stdout and (tmp_path / "out" / "quick-tiled.json").is_file()


def test_every_subcommand_has_help():
    for command in ("synth", "check", "show", "train", "demo", "bench"):
        result = dalidw(command, "--help")
        assert result.returncode == 0 and "usage: dalidw " + command in result.stdout


@pytest.mark.parametrize("kind, extra, check_args, band_count, dtype", [
    ("label", [], ["--num-classes", 9], 1, "uint8"),
    ("probability", [], ["--bands", "6,0,1"], 9, "float32"),
    ("sentinel", ["--bands", 6, "--planar"], ["--bands", "3,2,1", "--scale", 10000], 6, "uint16"),
])
def test_synth_writes_real_data_kinds_that_check_accepts(tmp_path, kind, extra, check_args, band_count, dtype):
    import numpy as np
    import tifffile

    out = tmp_path / kind
    result = dalidw("synth", out, "--kind", kind, "--regions", 1, "--size", "64x96", "--tile", "32x32",
                    "--labels", "2016..2017", *extra)
    assert result.returncode == 0, result.stderr
    with tifffile.TiffFile(out / "Images" / "2017" / "1000.tif") as tif:
        page = tif.pages.first
        pixels = page.asarray()
        assert page.samplesperpixel == band_count and pixels.dtype == dtype
        assert 33550 in page.tags and 33922 in page.tags, "GeoTIFF tags as in exports"
    if kind == "label":
        assert pixels.max() <= 8 and 6 in pixels, "Dynamic World class ids, built-up (6) included"
    if kind == "probability":
        np.testing.assert_allclose(pixels.sum(axis=-1), 1.0, atol=1e-5)
    result = dalidw("check", out / "tiles.csv", out / "Images", "--labels", "2016..2017", "--decode", *check_args)
    assert result.returncode == 0, result.stderr
    assert "no problems found" in result.stdout


def test_train_with_the_mirrored_strategy(synth_dir, tmp_path):
    result = dalidw("train", synth_dir / "tiles.csv", synth_dir / "Images", "--labels", "2016..2018",
                    "--strategy", "mirrored", "--epochs", 1, "--batch-size", 8, "--dim", "16", "--device", "cpu",
                    "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "validation MAE" in result.stdout and (tmp_path / "run" / "model.keras").is_file()
    log = pd.read_csv(tmp_path / "run" / "log.csv")
    assert {"loss", "val_loss", "val_mae"} <= set(log.columns) and log.val_loss.notna().all()


def test_train_multiworker_without_tf_config_says_so(synth_dir, tmp_path):
    env_free = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    exe = shutil.which("dalidw") or os.path.join(os.path.dirname(sys.executable), "dalidw")
    result = subprocess.run([exe, "train", str(synth_dir / "tiles.csv"), str(synth_dir / "Images"), "--labels",
                             "2016..2018", "--strategy", "multiworker", "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, env=env_free, timeout=300)
    assert result.returncode == 2 and "needs TF_CONFIG" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["train", "--epochs", "0"], "--epochs: expected a number >= 1, got '0'"),
    (["show", "--batch", "0", "--epoch", "-3"], "--epoch: expected a number >= 0, got '-3'"),
    (["show", "--batch", "0", "--batch-size", "0"], "--batch-size: expected a number >= 1"),
])
def test_out_of_range_numbers_are_refused_before_any_work(synth_dir, args, message):
    command, *rest = args
    result = dalidw(command, synth_dir / "tiles.csv", synth_dir / "Images", *rest, "--labels", "2016..2018")
    assert result.returncode == 2 and message in result.stderr


def test_an_unwritable_output_is_one_line_with_exit_code_2(synth_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = dalidw("show", synth_dir / "tiles.csv", synth_dir / "Images", "--tile", 3, "--labels",
                    "2016..2018", "-o", blocker / "sub" / "x.png")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and str(blocker) in result.stderr


# -- train --resume, and a quiet start-up ------------------------------------------------------

#: absl's notice and log lines of native code, e.g. "I0000 00:00:17957.88 17904 cudart_stub.cc:31] ..."
NATIVE_LOG = re.compile(r"^(WARNING: All log messages before absl|[IWEF]\d{4} \d\d:\d\d:[\d.]+ +\d+ \S+:\d+\])", re.M)
TRAIN = ("--labels", "2016..2018", "--batch-size", 4, "--dim", 8, "--device", "cpu")


@pytest.fixture(scope="module")
def first_epoch(tmp_path_factory):
    """A planar dataset (its images take the slow path, with a SlowPathWarning) and the result and
    folder of one epoch of `dalidw train` on it, run with TensorFlow's log level left unset."""
    root = tmp_path_factory.mktemp("resume")
    result = dalidw("synth", root / "data", "--regions", 2, "--size", "64x96", "--tile", "32x32", "--labels",
                    "2016..2018", "--planar")
    assert result.returncode == 0, result.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP_")}
    result = dalidw("train", root / "data" / "tiles.csv", root / "data" / "Images", *TRAIN, "--epochs", 1,
                    "--out", root / "run", env=env)
    assert result.returncode == 0, result.stderr
    return root, result


def train_again(first_epoch, tmp_path, *args):
    root, _ = first_epoch
    shutil.copytree(root / "run", tmp_path / "run")
    return dalidw("train", root / "data" / "tiles.csv", root / "data" / "Images", "--out", tmp_path / "run",
                  *args)


def test_train_starts_quietly_but_shows_warnings_meant_for_the_user(first_epoch):
    _, result = first_epoch
    assert not NATIVE_LOG.search(result.stderr), result.stderr
    assert "[[{{node" not in result.stderr
    assert "SlowPathWarning" in result.stderr and "planar-separate" in result.stderr


def test_train_resume_continues_the_run_and_appends_to_its_log(first_epoch, tmp_path):
    root, _ = first_epoch
    result = train_again(first_epoch, tmp_path, *TRAIN, "--epochs", 3, "--resume")
    assert result.returncode == 0, result.stderr
    assert "resumed after epoch 1 of 3" in result.stdout
    log = pd.read_csv(tmp_path / "run" / "log.csv")
    assert log.epoch.tolist() == [0, 1, 2]
    pd.testing.assert_frame_equal(log.iloc[:1], pd.read_csv(root / "run" / "log.csv"))
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["epochs_done"] == 3


@pytest.mark.parametrize("args, message", [
    (("--epochs", 1), "Expected `epochs` to be more than the 1 epoch(s) already done in"),
    (("--epochs", 3, "--dim", 16), "dim=[16, 16] where the checkpoint has dim=[8, 8]"),
])
def test_train_resume_refuses_what_it_cannot_continue_in_one_line(first_epoch, tmp_path, args, message):
    result = train_again(first_epoch, tmp_path, *TRAIN, *args, "--resume")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("dalidw train: error: Expected") and message in lines[0]


def test_train_resume_without_a_checkpoint_is_exit_code_2(first_epoch, tmp_path):
    root, _ = first_epoch
    result = dalidw("train", root / "data" / "tiles.csv", root / "data" / "Images", *TRAIN, "--out",
                    tmp_path / "empty", "--resume")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "Expected checkpoint.keras and checkpoint.json of an earlier run in" in result.stderr


def test_verbose_is_a_global_flag(synth_dir):
    result = dalidw("--verbose", "check", synth_dir / "tiles.csv", synth_dir / "Images", "--labels", "2016..2018")
    assert result.returncode == 0 and "no problems found" in result.stdout
    assert "--verbose" in dalidw("--help").stdout
