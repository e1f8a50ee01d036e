"""Write monitor records as they are measured: JSON lines, CSV, and TensorBoard when installed.

Every record is appended and flushed (``os.fsync`` is not called: a killed *process* keeps what it
wrote, a power cut may not), so an interrupted run keeps what it measured and a resumed run
(:class:`hesse.SharpnessMonitor` with ``resume=True``) appends to the same files. The JSON-lines
file is the source of truth (:func:`read_log`); the CSV holds the same scalar columns for
spreadsheets; TensorBoard scalars are written when ``torch.utils.tensorboard`` can be imported
(it needs the ``tensorboard`` package) and skipped silently otherwise (``SharpnessLog.tensorboard``
says which).
"""

from __future__ import annotations

import csv
import json
import math
import os
import pickle
from typing import Any

import torch

__all__ = ["SharpnessLog", "read_log", "truncate_log", "CSV_COLUMNS"]

#: Scalar columns of ``sharpness.csv`` (lists are joined with ``;``, missing values left empty).
CSV_COLUMNS = ("step", "loss", "grad_norm", "lr", "stability_limit", "lambda_max", "sharpness_ratio",
               "lambda_min", "trace", "status", "flags", "num_matvecs", "converged", "residual",
               "operator")


def _clean(value: Any) -> Any:
    """JSON cannot hold NaN/inf portably: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _trim_partial_line(path: str) -> None:
    """Drop a last line left unfinished by a crash, so appended records start on a fresh line."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb+") as fh:
        data = fh.read()
        if data.endswith(b"\n"):
            return
        fh.truncate(data.rfind(b"\n") + 1)


def _keep_lines(path: str, keep) -> None:
    """Rewrite ``path`` with the complete lines for which ``keep(line)`` is true (temp file, then os.replace)."""
    if not os.path.exists(path):
        return
    with open(path) as fh:
        text = fh.read()
    lines = text.split("\n")
    complete = lines[:-1]  # the text after the last newline is a line cut short by an interruption
    kept = [line for i, line in enumerate(complete) if keep(i, line)]
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def truncate_log(log_dir: str | os.PathLike, step: int) -> None:
    """Drop every record (JSON lines, CSV rows, density snapshots) measured after ``step``.

    A resumed run restarts from a checkpoint at ``step``; records written after that checkpoint
    (an interruption fell between the log write and the next checkpoint) will be measured again,
    so they are removed first and the resumed log equals an uninterrupted one.
    """
    log_dir = os.fspath(log_dir)

    def json_step_at_most(_i, line):
        try:
            return int(json.loads(line)["step"]) <= step
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            return False

    for name in ("sharpness.jsonl", "density.jsonl"):
        _keep_lines(os.path.join(log_dir, name), json_step_at_most)

    def csv_step_at_most(i, line):
        if i == 0:
            return True  # header
        try:
            return int(next(csv.reader([line]))[0]) <= step
        except (StopIteration, ValueError, IndexError):
            return False

    _keep_lines(os.path.join(log_dir, "sharpness.csv"), csv_step_at_most)


class SharpnessLog:
    """Append-only log in ``log_dir``: ``sharpness.jsonl``, ``sharpness.csv``, ``density.jsonl``.

    ``resume=False`` starts fresh files (existing ones are replaced); ``resume=True`` keeps them
    and appends.
    """

    def __init__(self, log_dir: str | os.PathLike, resume: bool = False, tensorboard: bool = True):
        self.log_dir = os.fspath(log_dir)
        os.makedirs(self.log_dir, exist_ok=True)
        self.jsonl_path = os.path.join(self.log_dir, "sharpness.jsonl")
        self.csv_path = os.path.join(self.log_dir, "sharpness.csv")
        self.density_path = os.path.join(self.log_dir, "density.jsonl")
        for path in (self.jsonl_path, self.csv_path, self.density_path):
            if not resume and os.path.exists(path):
                os.remove(path)
            elif resume:
                _trim_partial_line(path)
        new_csv = not os.path.exists(self.csv_path) or os.path.getsize(self.csv_path) == 0
        self._csv_file = open(self.csv_path, "a", newline="")  # noqa: SIM115 -- closed in close()
        self._csv = csv.DictWriter(self._csv_file, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        if new_csv:
            self._csv.writeheader()
            self._csv_file.flush()
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except (ImportError, ModuleNotFoundError):
                self._tb = None
            else:
                self._tb = SummaryWriter(os.path.join(self.log_dir, "tensorboard"))

    @property
    def tensorboard(self) -> bool:
        """True when TensorBoard scalars are being written."""
        return self._tb is not None

    def write(self, record: dict) -> None:
        """Append one record to the JSON lines and CSV files (and TensorBoard), flushed."""
        record = _clean(record)
        with open(self.jsonl_path, "a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
            fh.flush()
        row = {k: record.get(k) for k in CSV_COLUMNS}
        row["flags"] = ";".join(record.get("flags") or [])
        self._csv.writerow({k: ("" if v is None else v) for k, v in row.items()})
        self._csv_file.flush()
        if self._tb is not None:
            step = int(record["step"])
            for key in ("loss", "grad_norm", "lambda_max", "stability_limit", "lambda_min", "trace",
                        "sharpness_ratio"):
                if record.get(key) is not None:
                    self._tb.add_scalar(f"hesse/{key}", float(record[key]), step)
            self._tb.flush()

    def write_density(self, step: int, density: Any) -> None:
        """Append one spectral-density snapshot (grid, density, raw SLQ nodes and weights)."""
        entry = {"step": int(step), "grid": density.grid.tolist(), "density": density.density.tolist(),
                 "nodes": density.nodes.tolist(), "weights": density.weights.tolist(),
                 "sigma": float(density.sigma)}
        with open(self.density_path, "a") as fh:
            fh.write(json.dumps(_clean(entry)) + "\n")
            fh.flush()

    def close(self) -> None:
        if not self._csv_file.closed:
            self._csv_file.close()
        if self._tb is not None:
            self._tb.close()

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


def load_saved_state(path: str, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` with a one-line ``ValueError`` for each way it fails.

    An empty or truncated file (an interruption, a full disk) and a file holding objects other than
    tensors and plain containers (refused by ``weights_only``: no pickled code runs) are named as such.
    """
    if os.path.isdir(path):
        raise ValueError(f"cannot resume: {what} {path!r} is a folder, not a file written by hesse.")
    if os.path.getsize(path) == 0:
        raise ValueError(f"cannot resume: {what} {path!r} is empty (an interrupted write?); delete it or the "
                         "log folder to start afresh.")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Weights only" in str(err):
            raise ValueError(f"cannot resume: {what} {path!r} holds objects other than tensors, numbers and "
                             "containers; it was refused unread (no pickled code runs). It was not written by "
                             "hesse: delete it or the log folder to start afresh.") from None
        raise ValueError(f"cannot resume: {what} {path!r} is truncated or not a torch.save file "
                         f"({str(err).splitlines()[0][:120]}); delete it or the log folder to start afresh.") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ValueError(f"cannot resume: {what} {path!r} is truncated or not a torch.save file "
                         f"({type(err).__name__}: {str(err).splitlines()[0][:120]}); delete it or the log folder "
                         "to start afresh.") from None


def read_log(path: str | os.PathLike) -> list[dict]:
    """Records of a ``sharpness.jsonl`` file (or of the one in directory ``path``), in order.

    A final line cut short by a crash (not valid JSON) is skipped.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "sharpness.jsonl")
    if not os.path.exists(path):
        raise ValueError(f"no monitor log at {path!r}; pass a log_dir written by SharpnessMonitor.")
    records = []
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by an interruption
    return records
