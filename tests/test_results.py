"""Parquet results: fixed schema, atomic files, readable with pandas while a sweep runs; compaction."""
import os

import pandas as pd
import pytest

from ebomlc.config import TrialConfig
from ebomlc.cli import main as cli_main
from ebomlc.results import EPOCH_SCHEMA, TRIAL_SCHEMA, compact, config_columns, read_table, write_trial


def rows_for(method, seed):
    config = TrialConfig(method=method, seed=seed, epochs=2).validated()
    trial = {"trial_id": config.trial_id(), "status": "ok", "experiment": "t", **config_columns(config.to_dict()),
             "test_acc_last": 0.5 + seed / 10, "label_correction_confusion": [1, 2, 3, 4]}
    epochs = [{"trial_id": trial["trial_id"], "dataset": "synthetic", "method": method, "epoch": e,
               "test_acc": 0.1 * e} for e in range(2)]
    return trial, epochs


def test_written_trials_read_back_with_pandas(tmp_path):
    for seed in range(3):
        write_trial(str(tmp_path), *rows_for("erm", seed))
    frame = pd.read_parquet(tmp_path / "trials")
    assert len(frame) == 3
    assert sorted(frame["test_acc_last"]) == pytest.approx([0.5, 0.6, 0.7])
    assert set(frame["method"].astype(str)) == {"erm"}
    epochs = read_table(str(tmp_path), "epochs")
    assert len(epochs) == 6 and list(epochs.columns) != []
    assert set(TRIAL_SCHEMA.names) <= set(read_table(str(tmp_path), "trials").columns)


def test_files_are_hive_partitioned_and_no_temporary_is_left(tmp_path):
    trial, epochs = rows_for("erm", 0)
    write_trial(str(tmp_path), trial, epochs)
    folder = tmp_path / "trials" / "dataset=synthetic" / "method=erm"
    assert os.listdir(folder) == [f"{trial['trial_id']}.parquet"]


def test_rewriting_a_trial_replaces_it(tmp_path):
    trial, epochs = rows_for("erm", 0)
    write_trial(str(tmp_path), trial, epochs)
    write_trial(str(tmp_path), {**trial, "test_acc_last": 0.9}, epochs)
    frame = read_table(str(tmp_path), "trials")
    assert list(frame["test_acc_last"]) == [0.9]


def test_unknown_metric_is_an_error_not_a_dropped_column(tmp_path):
    trial, epochs = rows_for("erm", 0)
    epochs[0]["made_up_metric"] = 1.0
    with pytest.raises(KeyError, match="made_up_metric"):
        write_trial(str(tmp_path), trial, epochs)


def test_reading_an_empty_storage_gives_empty_frame_with_columns(tmp_path):
    frame = read_table(str(tmp_path), "epochs")
    assert len(frame) == 0 and list(frame.columns) == EPOCH_SCHEMA.names


def _parquet_files(root):
    return sorted(os.path.relpath(os.path.join(folder, name), root) for folder, _, names in os.walk(root)
                  for name in names if name.endswith(".parquet"))


def _sorted(frame, by):
    return frame.sort_values(by).reset_index(drop=True)


def test_compact_leaves_one_file_per_partition_with_the_same_rows(tmp_path):
    root = str(tmp_path)
    for method in ("erm", "glc"):
        for seed in range(3):
            write_trial(root, *rows_for(method, seed))
    trials, epochs = read_table(root, "trials"), read_table(root, "epochs")

    assert compact(root) == {"trials": 4, "epochs": 4}            # 6 files -> 2 in each table
    files = _parquet_files(root)
    assert len(files) == 4 and all(os.path.basename(f).startswith("part-") for f in files), files
    pd.testing.assert_frame_equal(_sorted(read_table(root, "trials"), "trial_id"), _sorted(trials, "trial_id"))
    pd.testing.assert_frame_equal(_sorted(read_table(root, "epochs"), ["trial_id", "epoch"]),
                                  _sorted(epochs, ["trial_id", "epoch"]))
    assert compact(root) == {"trials": 0, "epochs": 0}            # idempotent
    assert len(pd.read_parquet(tmp_path / "trials")) == 6         # plain pandas reads it too


def test_a_trial_written_again_after_compaction_reads_as_its_latest_write_only(tmp_path):
    root = str(tmp_path)
    for seed in range(2):
        write_trial(root, *rows_for("erm", seed))
    compact(root)
    trial, epochs = rows_for("erm", 0)
    write_trial(root, {**trial, "test_acc_last": 0.99}, epochs[:1])     # e.g. re-run, stopped after one epoch

    trials, epoch_rows = read_table(root, "trials").set_index("trial_id"), read_table(root, "epochs")
    assert len(trials) == 2 and trials.loc[trial["trial_id"], "test_acc_last"] == 0.99
    assert sorted(epoch_rows.loc[epoch_rows["trial_id"] == trial["trial_id"], "epoch"]) == [0]
    assert len(epoch_rows) == 3
    compact(root)                                                 # the duplicate is dropped for good
    assert len(pd.read_parquet(tmp_path / "trials")) == 2 and len(pd.read_parquet(tmp_path / "epochs")) == 3


def test_a_compaction_interrupted_before_deleting_leaves_no_duplicate_rows(tmp_path):
    root = str(tmp_path)
    for seed in range(3):
        write_trial(root, *rows_for("erm", seed))
    originals = {name: (tmp_path / name).read_bytes() for name in _parquet_files(root)}
    compact(root)
    for name, content in originals.items():       # the state of a crash after the part file was written
        (tmp_path / name).write_bytes(content)

    assert len(pd.read_parquet(tmp_path / "trials")) == 6        # the part file and the three trial files
    assert len(read_table(root, "trials")) == 3 and len(read_table(root, "epochs")) == 6
    compact(root)
    assert len(_parquet_files(root)) == 2 and len(pd.read_parquet(tmp_path / "trials")) == 3


def test_compact_command(tmp_path, capsys):
    for seed in range(2):
        write_trial(str(tmp_path), *rows_for("erm", seed))
    assert cli_main(["compact", str(tmp_path)]) == 0
    assert "1 trial files and 1 epoch files merged away" in capsys.readouterr().out
    assert cli_main(["compact", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {tmp_path / 'nothing'} holds no trials/ or epochs/ folder; "
                                               "give the folder a sweep or `train --out` wrote")
