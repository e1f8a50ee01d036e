"""The files of a curvature report: figures, ``report.json`` and ``summary.md``.

The analysis itself lives in :mod:`hesse.diagnostics.report` (layer 4); this module only draws and
writes, which is why it sits in the plotting layer.

Every file is written under a temporary name and moved into place (``os.replace``) only once all of
them were written: a failure part-way leaves the folder's earlier report as it was, never a mix of
old and new files. :func:`remove_stale_report` deletes an earlier ``report.json`` / ``summary.md``
when a new run into the same folder fails, so that nothing there claims results it did not produce.
"""

from __future__ import annotations

import json
import os

from hesse._progress import message
from hesse.diagnostics.report import summary_markdown
from hesse.distributed import is_main_process

from . import diagnostics as dplot
from .geometry import plot_contour
from .spectrum import plot_spectral_density, plot_top_eigenvalues

__all__ = ["write_report", "remove_stale_report", "REPORT_FILES"]

#: The files whose presence claims a finished report.
REPORT_FILES = ("report.json", "summary.md")

_PARTIAL = ".partial"


def remove_stale_report(out_dir: str) -> list[str]:
    """Delete ``report.json`` and ``summary.md`` (and leftovers of an interrupted write) in ``out_dir``.

    Call it when a run into ``out_dir`` failed: the files of an earlier run would otherwise sit next
    to the new run's log and claim results it did not produce. Returns the paths removed.
    """
    removed: list[str] = []
    if not os.path.isdir(out_dir):
        return removed
    for name in os.listdir(out_dir):
        if name in REPORT_FILES or _PARTIAL in name:
            path = os.path.join(out_dir, name)
            if os.path.isfile(path):
                os.remove(path)
                removed.append(path)
    return removed


def write_report(out_dir: str, result: dict, example: dict | None = None, example_f=None,
                 title: str = "hesse report", progress: bool = True) -> dict:
    """Write figures, ``report.json`` and ``summary.md`` into ``out_dir``; returns ``{name: path}``.

    ``result`` is what :func:`hesse.diagnostics.report.analyze_training` returns; ``example`` and
    ``example_f`` (:func:`hesse.diagnostics.report.quadratic_example`'s numbers and function) add the
    contour figure. Only the main process writes when ``torch.distributed`` is initialized (other ranks return ``{}``).
    """
    if not is_main_process():
        return {}

    os.makedirs(out_dir, exist_ok=True)
    files: dict[str, str] = {}
    staged: list[tuple[str, str]] = []  # (temporary path, final path), moved into place at the end

    def stage(name: str) -> str:
        stem, ext = os.path.splitext(name)
        tmp = os.path.join(out_dir, f"{stem}{_PARTIAL}{ext}")  # keeps the suffix matplotlib reads
        staged.append((tmp, os.path.join(out_dir, name)))
        files[name] = os.path.join(out_dir, name)
        return tmp

    def save(fig, name):
        dplot.save_figure(fig, stage(name))

    try:
        message(f"[report] writing figures to {out_dir}/", progress)
        records = result["records"]
        if records and result["train_steps"]:
            save(dplot.plot_sharpness(records, eos_band=result["eos_band"]), "sharpness.png")
            save(dplot.plot_loss_flags(records, losses=result["training_losses"]), "loss.png")
            if result["_monitor"].densities:
                save(dplot.plot_density_snapshots(result["_monitor"].densities), "density_snapshots.png")
        save(plot_spectral_density(result["_density"]), "density.png")
        save(plot_top_eigenvalues(result["_top"]), "top_eigenvalues.png")
        save(dplot.plot_landscape(result["_landscape1"]), "landscape_1d.png")
        save(dplot.plot_landscape(result["_landscape2"]), "landscape_2d.png")
        notes: list[str] = []
        if example is not None and example_f is not None:
            fig = plot_contour(example_f, ((-1.5, 2.5), (-1.0, 3.0)), points=[example["critical_point"]])
            save(fig, "contour.png")
        payload = {k: v for k, v in result.items() if not k.startswith("_")}
        if example is not None:
            payload["example"] = example
        payload["files"] = sorted(files) + ["report.json", "summary.md"]
        payload["notes"] = notes
        md = summary_markdown(payload, title)
        with open(stage("report.json"), "w") as fh:
            json.dump(payload, fh, indent=2, default=float)
        with open(stage("summary.md"), "w") as fh:
            fh.write(md)
    except BaseException:
        for tmp, _ in staged:  # nothing of the failed write stays behind; the old report is untouched
            if os.path.exists(tmp):
                os.remove(tmp)
        raise
    # report.json last: its presence says every other file of this run is in place
    staged.sort(key=lambda pair: (os.path.basename(pair[1]) in REPORT_FILES,
                                  os.path.basename(pair[1]) == "report.json"))
    for tmp, final in staged:
        os.replace(tmp, final)
    return files
