"""The Lightning callback (runs only where PyTorch Lightning is installed)."""

import pytest
import torch

try:
    import lightning.pytorch as pl
except Exception as err:  # noqa: BLE001 - absent, or broken by a torchvision built for another torch
    pytest.skip(f"PyTorch Lightning is not importable here: {type(err).__name__}: {err}", allow_module_level=True)


def test_callback_measures_during_fit(linear_regression, tmp_path):
    from hesse.diagnostics.lightning import SharpnessCallback

    p = linear_regression
    X, y = p["data"]

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = p["model"]

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            return p["loss_fn"](self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=64)
    cb = SharpnessCallback(p["loss_fn"], (X, y), every=2, progress=False)
    trainer = pl.Trainer(max_steps=4, callbacks=[cb], logger=False, enable_checkpointing=False,
                         default_root_dir=tmp_path, enable_progress_bar=False)
    trainer.fit(Module(), loader)
    assert [r.step for r in cb.monitor.records] == [2, 4]
    assert cb.monitor.records[-1].lambda_max == pytest.approx(p["lambda_max"], rel=1e-6)
