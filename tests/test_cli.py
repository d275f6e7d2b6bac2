"""The dalidw command as a user runs it: through its console script, in a subprocess."""

import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from dalidw.cli import parse_dim, parse_labels


def dalidw(*args, cwd=None):
    exe = shutil.which("dalidw") or os.path.join(os.path.dirname(sys.executable), "dalidw")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
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
