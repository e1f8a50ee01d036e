"""The files of a curvature report: figures, ``report.json`` and ``summary.md``.

The analysis itself lives in :mod:`hesse.diagnostics.report` (layer 4); this module only draws and
writes, which is why it sits in the plotting layer.
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

__all__ = ["write_report"]


def write_report(out_dir: str, result: dict, example: dict | None = None, example_f=None,
                 title: str = "hesse report", progress: bool = True) -> dict:
    """Write figures, ``report.json`` and ``summary.md`` into ``out_dir``; returns ``{name: path}``.

    ``result`` is what :func:`hesse.diagnostics.report.analyze_training` returns; ``example`` and
    ``example_f`` (the seeds' worked example and its function) add the contour figure. Only the
    main process writes when ``torch.distributed`` is initialized (other ranks return ``{}``).
    """
    if not is_main_process():
        return {}

    os.makedirs(out_dir, exist_ok=True)
    files: dict[str, str] = {}

    def save(fig, name):
        files[name] = dplot.save_figure(fig, os.path.join(out_dir, name))

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
    notes = []
    if example is not None and example_f is not None:
        fig = plot_contour(example_f, ((-1.5, 2.5), (-1.0, 3.0)), points=[example["critical_point"]])
        save(fig, "contour.png")
    payload = {k: v for k, v in result.items() if not k.startswith("_")}
    if example is not None:
        payload["example"] = example
    payload["files"] = sorted(files) + ["report.json", "summary.md"]
    payload["notes"] = notes
    with open(os.path.join(out_dir, "report.json"), "w") as fh:
        json.dump(payload, fh, indent=2, default=float)
    files["report.json"] = os.path.join(out_dir, "report.json")
    md = summary_markdown(payload, title)
    with open(os.path.join(out_dir, "summary.md"), "w") as fh:
        fh.write(md)
    files["summary.md"] = os.path.join(out_dir, "summary.md")
    return files
