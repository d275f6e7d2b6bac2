"""The tiles table: coordinates are parsed safely, long and wide frames reduce to one row per tile,
a column read twice is refused, and every problem in the table is reported at once."""

import numpy as np
import pandas as pd
import pytest

from dalidw import DataError, OptionError, SequenceDataLoader, parse_box
from dalidw.cli import main
from dalidw.index import build_table


@pytest.mark.parametrize("value, expected", [
    ("(581, 806, 626, 846)", (581, 806, 626, 846)),
    ("[1,2,3,4]", (1, 2, 3, 4)),
    (" 1, 2, 3, 4 ", (1, 2, 3, 4)),
    ("(1.0, 2, 3, 4)", (1, 2, 3, 4)),
    ((1, 2, 3, 4), (1, 2, 3, 4)),
    ([np.int64(5), 6, 7.0, 8], (5, 6, 7, 8)),
    (np.array([1, 2, 3, 4]), (1, 2, 3, 4)),
])
def test_parse_box_accepts_strings_and_sequences(value, expected):
    assert parse_box(value) == expected


@pytest.mark.parametrize("value", [
    "__import__('os').system('echo pwned')",
    "(1, 2, 3)",
    "(1, 2, 3, 4, 5)",
    "(1.5, 2, 3, 4)",
    "(a, b, c, d)",
    (1, 2, 3),
    (1, 2, 3, float("nan")),
    None,
    1234,
])
def test_parse_box_rejects_anything_but_four_integers(value):
    with pytest.raises(ValueError):
        parse_box(value)


def long_table():
    rows = []
    for tile, region, box in [(1, 7, "(0, 0, 10, 10)"), (2, 7, "(10, 0, 20, 12)")]:
        for year, target in [(2020, 0.1), (2021, 0.2)]:
            rows.append((tile, region, year, target + tile, box))
    return pd.DataFrame(rows, columns=["tile_id", "region_id", "label_id", "target", "region_coordinates"])


def test_long_format_takes_box_and_target_from_the_last_label():
    table = build_table(long_table(), [2020, 2021])
    assert list(table.tile_ids) == [1, 2]
    assert table.targets[:, 0] == pytest.approx([1.2, 2.2])
    assert table.boxes.tolist() == [[0, 0, 10, 10], [10, 0, 20, 12]]
    assert list(table.region_ids) == ["7", "7"]


def test_label_ids_match_whatever_their_type():
    frame = long_table()
    frame["label_id"] = frame["label_id"].astype(float)
    assert len(build_table(frame, ["2020", "2021"])) == 2


def test_wide_format_is_one_row_per_tile_with_several_targets():
    frame = pd.DataFrame({"tile_id": ["a", "b"], "region_id": [3, 4], "t1": [1.0, 2.0], "t2": [3.0, 4.0],
                          "region_coordinates": [(0, 0, 5, 5), [1, 1, 4, 4]]})
    table = build_table(frame, [2020], ["t1", "t2"])
    assert table.targets.tolist() == [[1.0, 3.0], [2.0, 4.0]]
    assert table.target_names == ("t1", "t2")


def test_a_target_column_named_twice_is_refused():
    frame = pd.DataFrame({"tile_id": ["a"], "region_id": [3], "t1": [1.0], "region_coordinates": [(0, 0, 5, 5)]})
    with pytest.raises(OptionError, match=r"to name each column once. Received: target=\['t1', 't1'\]"):
        build_table(frame, [2020], ["t1", "t1"])


def test_last_image_needs_no_target_column():
    frame = long_table().drop(columns="target")
    table = build_table(frame, [2020, 2021], "last-image")
    assert table.targets is None


def test_missing_columns_are_named():
    with pytest.raises(DataError, match="missing column 'region_coordinates'"):
        build_table(long_table().drop(columns="region_coordinates"), [2020, 2021])


def test_every_problem_is_reported_at_once():
    frame = long_table()
    frame.loc[0, "region_coordinates"] = "(1, 2, 3)"
    frame.loc[3, "target"] = np.nan
    frame = pd.concat([frame, frame.iloc[[3]]], ignore_index=True)
    frame.loc[len(frame)] = (9, 7, 2020, 0.5, "(0, 0, 4, 4)")
    with pytest.raises(DataError) as info:
        build_table(frame, [2020, 2021])
    text = str(info.value)
    assert "tile_id 9 has no row for the last label 2021" in text
    assert "tile_id 2 appears more than once" in text
    assert "target 'target' is nan, not a finite number" in text
    assert len(info.value.problems) >= 3


def test_bad_coordinates_and_small_boxes_name_the_row():
    frame = long_table()
    frame.loc[1, "region_coordinates"] = "(5, 5, 5, 9)"
    frame.loc[3, "region_coordinates"] = "os.system('x')"
    with pytest.raises(DataError) as info:
        build_table(frame, [2020, 2021])
    assert "row 1 (tile_id 1): box (5, 5, 5, 9) is 0x4 pixels" in str(info.value)
    assert "row 3 (tile_id 2): bad region_coordinates" in str(info.value)


def test_min_tile_size_is_enforced():
    with pytest.raises(DataError, match="at least 11x11"):
        build_table(long_table(), [2020, 2021], min_tile_size=11)


def test_many_problems_list_twenty_and_count_the_rest():
    frame = pd.DataFrame({"tile_id": range(30), "region_id": 1, "target": np.inf,
                          "region_coordinates": "(0, 0, 1, 1)"})
    with pytest.raises(DataError) as info:
        build_table(frame, [2020])
    assert len(info.value.problems) == 30
    assert "... and 10 more" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_no_rows_for_the_last_label_says_which_labels_there_are():
    with pytest.raises(DataError, match="no row has label_id == 2022"):
        build_table(long_table(), [2020, 2022])


def test_an_empty_table_is_an_error():
    with pytest.raises(DataError, match="no rows"):
        build_table(long_table().iloc[:0], [2020, 2021])


def repeated(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """``frame`` with a second ``column``, as a merge or ``pd.concat(axis=1)`` leaves it."""
    return pd.concat([frame, frame[[column]]], axis=1)


@pytest.mark.parametrize("column", ["target", "tile_id", "label_id"])
def test_a_repeated_column_the_loader_reads_is_named_before_any_file_is_read(tmp_path, column):
    frame = repeated(long_table(), column)
    missing = tmp_path / "no-such-folder"  # reading any file would be a DataError naming it
    with pytest.raises(DataError, match=rf"repeats columns the loader reads.*\n  - column '{column}' appears 2 "
                                        r"times$") as info:
        SequenceDataLoader([2020, 2021], frame, missing, device="cpu")
    assert len(info.value.problems) == 1


def test_every_repeated_column_read_is_listed_and_others_are_left_alone():
    frame = long_table().assign(t2=1.0, notes="a")
    twice = pd.concat([frame, frame[["region_id", "t2", "t2", "region_coordinates"]]], axis=1)
    with pytest.raises(DataError) as info:
        build_table(twice, [2020, 2021], ["target", "t2"])
    assert info.value.problems == ["column 'region_id' appears 2 times",
                                   "column 'region_coordinates' appears 2 times", "column 't2' appears 3 times"]
    assert len(build_table(repeated(frame, "notes"), [2020, 2021])) == 2


def test_check_names_a_repeated_column_of_the_csv(dataset, tmp_path, capfd):
    repeated(dataset.table, "target").to_csv(tmp_path / "tiles.csv", index=False)
    assert main(["check", str(tmp_path / "tiles.csv"), dataset.image_dir, "--labels", "2016..2018"]) == 2
    assert "column 'target' appears 2 times" in capfd.readouterr().err
