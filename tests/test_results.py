"""Parquet results: fixed schema, atomic files, readable with pandas while a sweep runs."""
import os

import pandas as pd
import pytest

from ebomlc.config import TrialConfig
from ebomlc.results import EPOCH_SCHEMA, TRIAL_SCHEMA, config_columns, read_table, write_trial


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
