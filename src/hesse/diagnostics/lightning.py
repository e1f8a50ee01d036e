"""A PyTorch Lightning callback around :class:`hesse.SharpnessMonitor` (optional extra).

``from hesse.diagnostics.lightning import SharpnessCallback`` needs ``lightning`` (or the older
``pytorch_lightning``) installed; this module is not imported by ``hesse`` itself. Usage::

    trainer = lightning.Trainer(callbacks=[SharpnessCallback(loss_fn, (X, y), every=50, log_dir="sharp")])

After every optimizer step (``on_train_batch_end``) the monitor counts a step and, every ``every``
steps, measures λ_max of the LightningModule's loss Hessian on the fixed measurement data against the
limit of the first optimizer (``trainer.optimizers[0]``); values are also passed to
``pl_module.log`` as ``hesse/lambda_max`` and ``hesse/sharpness_ratio``.
"""

from __future__ import annotations

import importlib
from typing import Any

try:
    pl: Any = importlib.import_module("lightning.pytorch")
except ImportError:  # pragma: no cover - depends on the environment
    try:
        pl = importlib.import_module("pytorch_lightning")
    except ImportError as err:
        raise ImportError("hesse.diagnostics.lightning needs PyTorch Lightning: pip install lightning") from err

from .monitor import SharpnessMonitor

__all__ = ["SharpnessCallback"]


class SharpnessCallback(pl.Callback):
    """Run a :class:`SharpnessMonitor` inside a Lightning ``Trainer`` (keyword arguments go to it)."""

    def __init__(self, loss_fn: Any, data: Any, every: int | None = None, **monitor_kwargs: Any):
        super().__init__()
        # every=50 unless the steps are chosen otherwise (at= or schedule= among the monitor's options)
        if every is None and "at" not in monitor_kwargs and "schedule" not in monitor_kwargs:
            every = 50
        self.loss_fn, self.data, self.every, self.monitor_kwargs = loss_fn, data, every, monitor_kwargs
        self.monitor: SharpnessMonitor | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self.monitor = SharpnessMonitor(pl_module, self.loss_fn, self.data, every=self.every,
                                        **self.monitor_kwargs)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.monitor is None:  # a batch outside fit (e.g. trainer.validate): nothing to count
            return
        record = self.monitor.step(trainer.optimizers[0])
        if record is not None:
            pl_module.log("hesse/lambda_max", record.lambda_max)
            pl_module.log("hesse/sharpness_ratio", record.sharpness_ratio)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.monitor is not None:
            self.monitor.close()
