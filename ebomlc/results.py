"""The Parquet results schema, and its writer and reader (shared by the CLI, tune/ and analysis/).

Layout under a storage root (a local folder or a `s3://` / `gs://` URI, through pyarrow filesystems):

    <root>/trials/dataset=<d>/method=<m>/<trial_id>.parquet   one row per finished trial
    <root>/epochs/dataset=<d>/method=<m>/<trial_id>.parquet   one row per trial-epoch

Each file is written whole to a temporary name and then renamed, so a crash never leaves half a file and
a reader (`pandas.read_parquet("<root>/trials")`) sees only finished trials. Every row carries the UTC
time its trial was written (`written_at`).

Compaction (`compact`, run by tune/sweep.py when a sweep ends, or `python -m ebomlc compact ROOT`) merges
each partition's files into one `part-<id>.parquet`: one file to open instead of one per trial, which is
most of the time it takes to read a large sweep. A crash inside it, or a trial written again after it,
can leave a trial's rows twice; `read_table` keeps only each trial's latest write, so readers never see
that (a plain `pandas.read_parquet` could, in that window). The schemas are fixed
(`TRIAL_SCHEMA`, `EPOCH_SCHEMA`): a method's metric that is not listed here is an error, not a silently
dropped column, and files of different methods always read back as one table.

Accuracy columns say which protocol they follow:
  test_acc_at_best_clean_epoch  test accuracy at the epoch of best clean-validation accuracy (MLC's protocol:
                                the validation part of D when validation_fraction > 0, else D itself)
  test_acc_last                 test accuracy after the last epoch
  test_acc_max                  the best test accuracy over the epochs (optimistic; reported for comparison)
"""
from __future__ import annotations

import datetime
import json
import os
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

PARTITIONS = ("dataset", "method")

# Per-epoch metrics: name -> meaning. Every method reports a subset; the rest are null.
EPOCH_METRICS = {
    "lr": "main model learning rate during the epoch (eta_w)",
    "train_loss": "mean training loss of the method's steps",
    "test_acc": "accuracy on the test set",
    "test_loss": "cross-entropy on the test set",
    "clean_acc": "accuracy on the training part of the clean set D",
    "upper_loss": "upper loss F on D: cross-entropy of the main model, Eq. (2)",
    "val_acc": "accuracy on the validation part of D (null without one)",
    "val_loss": "cross-entropy on the validation part of D",
    "noisy_true_acc": "accuracy on D' against the true labels",
    "noisy_label_acc": "agreement with the noisy labels of D' (memorisation)",
    "mixture_loss": "EBOMLC mixture upper loss on D, Eq. (9)",
    "lower_loss": "lower loss G on D': cross-entropy against the meta model's corrected labels, Eq. (3)",
    "beta_mean": "mean dynamic-barrier coefficient over the epoch's steps, Eq. (7)/(11)",
    "beta_max": "largest dynamic-barrier coefficient of the epoch",
    "grad_q_norm_mean": "mean norm of grad Q over the epoch's steps",
    "lc_acc": "label-correction accuracy: argmax of the meta model on D' against the true labels",
    "lc_acc_corrupted": "label-correction accuracy on the samples of D' whose label was corrupted",
    "lc_acc_uncorrupted": "label-correction accuracy on the samples of D' whose label was already right",
    "lc_true_prob_corrupted": "mean probability the meta model gives the true label on the corrupted samples of "
                              "D' (soft correction; 1/K for a uniform guess, 0 for a copy of the given label)",
    "weight_mean": "mean example weight (L2RW, MW-Net, PMW-Net)",
    "weight_positive_fraction_mean": "fraction of the noisy batch given a positive weight (L2RW)",
    "kept_fraction_mean": "fraction of the batch used for the update (Co-teaching+)",
    "clean_split_fraction": "fraction of D' put in the labelled (clean) part by DivideMix's GMM",
    "epoch_time_s": "wall time of the epoch's training steps, seconds (evaluation excluded)",
}

_CONFIG_FIELDS = [
    ("method", pa.string()), ("model", pa.string()), ("width", pa.int64()), ("dataset", pa.string()),
    ("train_subset", pa.int64()), ("synthetic_train", pa.int64()), ("synthetic_test", pa.int64()),
    ("synthetic_classes", pa.int64()), ("synthetic_image_size", pa.int64()),
    ("clean_fraction", pa.float64()), ("validation_fraction", pa.float64()),
    ("noise", pa.string()), ("noise_rate", pa.float64()), ("noise_matrix", pa.string()),
    ("human_label_set", pa.string()), ("epochs", pa.int64()), ("batch_size", pa.int64()),
    ("clean_batch_size", pa.int64()), ("lr", pa.float64()), ("momentum", pa.float64()),
    ("weight_decay", pa.float64()), ("lr_milestones", pa.string()), ("lr_gamma", pa.float64()),
    ("meta_lr", pa.float64()), ("rho", pa.float64()), ("xi", pa.float64()), ("delta", pa.float64()),
    ("k", pa.int64()), ("mixture", pa.string()), ("options", pa.string()), ("seed", pa.int64()),
]
_JSON_FIELDS = ("noise_matrix", "lr_milestones", "options")

TRIAL_SCHEMA = pa.schema([
    ("trial_id", pa.string()), ("experiment", pa.string()), ("status", pa.string()), ("error", pa.string()),
    ("diverged_epoch", pa.int64()),
    *_CONFIG_FIELDS,
    ("num_classes", pa.int64()), ("num_clean", pa.int64()), ("num_val", pa.int64()), ("num_noisy", pa.int64()),
    ("realised_noise_rate", pa.float64()),
    ("test_acc_at_best_clean_epoch", pa.float64()), ("best_clean_epoch", pa.int64()),
    ("test_acc_last", pa.float64()), ("test_acc_max", pa.float64()),
    ("lc_acc_last", pa.float64()), ("label_correction_confusion", pa.list_(pa.int64())),
    ("epochs_done", pa.int64()), ("train_time_s", pa.float64()), ("wall_time_s", pa.float64()),
    ("device", pa.string()), ("device_name", pa.string()), ("node_id", pa.string()),
    ("ebomlc_version", pa.string()), ("torch_version", pa.string()),
    ("written_at", pa.timestamp("us", tz="UTC")),
])

EPOCH_SCHEMA = pa.schema([
    ("trial_id", pa.string()), ("experiment", pa.string()),
    ("dataset", pa.string()), ("method", pa.string()), ("noise", pa.string()), ("noise_rate", pa.float64()),
    ("seed", pa.int64()), ("rho", pa.float64()), ("xi", pa.float64()), ("delta", pa.float64()), ("k", pa.int64()),
    ("epoch", pa.int64()),
    *[(name, pa.float64()) for name in EPOCH_METRICS],
    ("written_at", pa.timestamp("us", tz="UTC")),
])


def config_columns(config: dict[str, Any]) -> dict[str, Any]:
    """The config as flat result columns (JSON text for the nested ones)."""
    row = {}
    for name, _ in _CONFIG_FIELDS:
        value = config.get(name)
        row[name] = json.dumps(value) if name in _JSON_FIELDS and value is not None else value
    return row


def check_epoch_row(row: dict[str, Any]) -> None:
    unknown = sorted(set(row) - set(EPOCH_SCHEMA.names))
    if unknown:
        raise KeyError(f"epoch metric {unknown[0]!r} is not in ebomlc.results.EPOCH_METRICS; add it there "
                       f"with its meaning (known: {', '.join(EPOCH_METRICS)})")


def _table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    for row in rows:
        unknown = sorted(set(row) - set(schema.names))
        if unknown:
            raise KeyError(f"column {unknown[0]!r} is not in the results schema")
    return pa.Table.from_pylist([{name: row.get(name) for name in schema.names} for row in rows], schema=schema)


def filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path) for a local folder or a URI such as s3://bucket/prefix."""
    if "://" in root:
        return pafs.FileSystem.from_uri(root)
    return pafs.LocalFileSystem(), os.path.abspath(root)


def write_trial(root: str, trial_row: dict[str, Any], epoch_rows: list[dict[str, Any]]) -> None:
    """Write one finished trial's rows (atomically per file) under `root`; replaces an earlier copy."""
    fs, base = filesystem(root)
    written_at = datetime.datetime.now(datetime.timezone.utc)
    for table_name, rows, schema in (("trials", [trial_row], TRIAL_SCHEMA), ("epochs", epoch_rows, EPOCH_SCHEMA)):
        table = _table([{**row, "written_at": written_at} for row in rows], schema)
        folder = "/".join([base, table_name] + [f"{p}={trial_row[p]}" for p in PARTITIONS])
        fs.create_dir(folder, recursive=True)
        final = f"{folder}/{trial_row['trial_id']}.parquet"
        temporary = f"{folder}/.{trial_row['trial_id']}.{uuid.uuid4().hex}.tmp"
        pq.write_table(table.drop_columns(list(PARTITIONS)), temporary, filesystem=fs)
        fs.move(temporary, final)


def _partitioning() -> ds.Partitioning:
    return ds.partitioning(pa.schema([(p, pa.string()) for p in PARTITIONS]), flavor="hive")


def _dataset(fs: pafs.FileSystem, path: str, schema: pa.Schema) -> ds.Dataset:
    file_schema = pa.schema([f for f in schema if f.name not in PARTITIONS])
    file_schema = pa.unify_schemas([file_schema, pa.schema([(p, pa.string()) for p in PARTITIONS])])
    return ds.dataset(path, filesystem=fs, format="parquet", partitioning=_partitioning(), schema=file_schema,
                      exclude_invalid_files=False, ignore_prefixes=[".", "_"])


def latest_writes(table: pa.Table) -> pa.Table:
    """Each trial's rows from its latest write only, once each (compaction can leave a trial's rows twice,
    see the module docstring). Rows without `written_at` (written before it existed) count as oldest."""
    if table.num_rows == 0 or "written_at" not in table.column_names:
        return table
    key = ["trial_id", "epoch"] if "epoch" in table.column_names else ["trial_id"]
    frame = table.select(key + ["written_at"]).to_pandas()
    if not frame.duplicated(key).any():
        return table                                                 # the usual case: nothing to drop
    newest = frame.groupby("trial_id")["written_at"].transform("max")
    frame["row"] = range(len(frame))
    latest = frame[(frame["written_at"] == newest) | newest.isna()].drop_duplicates(key)
    return table.take(pa.array(latest["row"].to_numpy()))


def read_table(root: str, table: str = "trials", filter=None, columns: list[str] | None = None):
    """Read `trials` or `epochs` under `root` as a pandas DataFrame (empty with the right columns if none);
    `columns` reads only those (a big sweep's confusion matrices are worth skipping). Each trial's rows
    come from its latest write only (`latest_writes`)."""
    schema = TRIAL_SCHEMA if table == "trials" else EPOCH_SCHEMA
    fs, base = filesystem(root)
    path = f"{base}/{table}"
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        empty = schema.empty_table()
        return (empty.select(columns) if columns else empty).to_pandas()
    keys = ["trial_id", "written_at"] + (["epoch"] if table == "epochs" else [])
    read_columns = None if columns is None else list(dict.fromkeys(list(columns) + keys))
    try:
        result = _dataset(fs, path, schema).to_table(filter=filter, columns=read_columns)
    except FileNotFoundError:      # a compaction removed a file between listing and reading: list again
        result = _dataset(fs, path, schema).to_table(filter=filter, columns=read_columns)
    result = latest_writes(result)
    return (result.select(columns) if columns is not None else result).to_pandas()


def compact(root: str) -> dict[str, int]:
    """Merge each partition's files under `root` into one file; returns {table: files merged away}.

    Per partition folder with more than one file: read them, write their rows (each trial's latest write)
    to `part-<uuid>.parquet` atomically, then delete exactly the files that were read, so trials written
    meanwhile are kept. Safe to interrupt and to run while trials are being written (see the module
    docstring); idempotent.
    """
    fs, base = filesystem(root)
    merged = {}
    for table_name, schema in (("trials", TRIAL_SCHEMA), ("epochs", EPOCH_SCHEMA)):
        merged[table_name] = 0
        path = f"{base}/{table_name}"
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            continue
        folders: dict[str, list[str]] = {}
        for info in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
            name = info.base_name
            if info.type == pafs.FileType.File and name.endswith(".parquet") and not name.startswith((".", "_")):
                folders.setdefault(info.path.rsplit("/", 1)[0], []).append(info.path)
        file_schema = pa.schema([f for f in schema if f.name not in PARTITIONS])
        for folder, files in sorted(folders.items()):
            if len(files) < 2:
                continue
            rows = latest_writes(ds.dataset(files, filesystem=fs, format="parquet", schema=file_schema).to_table())
            temporary = f"{folder}/.part.{uuid.uuid4().hex}.tmp"
            pq.write_table(rows, temporary, filesystem=fs)
            fs.move(temporary, f"{folder}/part-{uuid.uuid4().hex}.parquet")
            for file in files:
                try:
                    fs.delete_file(file)
                except FileNotFoundError:      # another compaction took it first; its rows are in its part
                    pass
            merged[table_name] += len(files) - 1
    return merged


def finished_trial_ids(root: str) -> set[str]:
    """Ids of the trials whose rows are already written under `root` (any status)."""
    frame = read_table(root, "trials")
    return set(frame["trial_id"])
