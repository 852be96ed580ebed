"""`python -m ebomlc train`: a run writes its Parquet rows; bad input exits 2 with one line, no traceback."""
import subprocess
import sys

import pandas as pd
import pytest

from ebomlc.cli import main

TINY = ["--dataset", "synthetic", "--model", "resnet8", "--width", "8", "--epochs", "2", "--batch-size", "32",
        "--clean-batch-size", "32", "--synthetic-train", "400", "--synthetic-test", "100",
        "--synthetic-classes", "4", "--synthetic-image-size", "8", "--clean-fraction", "0.1",
        "--device", "cpu", "--no-progress"]


def test_train_writes_rows_and_prints_summary(tmp_path, capsys):
    assert main(["train", "--method", "erm", *TINY, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "erm on synthetic" in out and "test acc" in out
    trials = pd.read_parquet(tmp_path / "trials")
    epochs = pd.read_parquet(tmp_path / "epochs")
    assert len(trials) == 1 and trials["status"].iloc[0] == "ok"
    assert sorted(epochs["epoch"]) == [0, 1]


@pytest.mark.parametrize("args, message", [
    (["--method", "nope"], "error: method must be one of"),
    (["--noise-rate", "1.5"], "error: noise_rate must be in [0, 1), got 1.5"),
    (["--clean-fraction", "0"], "error: clean_fraction must be in (0, 1), got 0.0"),
    (["--epochs", "0"], "error: epochs must be an integer >= 1, got 0"),
    (["--option", "novalue"], "error: --option must look like NAME=VALUE"),
])
def test_bad_config_exits_2_with_one_line(tmp_path, capsys, args, message):
    assert main(["train", *TINY, *args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not (tmp_path / "trials").exists()


def test_missing_cifar_without_download_fails_before_loading(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ebomlc", "train", "--method", "erm", "--dataset", "cifar10",
                             "--data-root", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr and "cifar" in result.stderr.lower()
