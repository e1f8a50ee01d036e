"""examples/transformer_blocks.py runs (--quick) and writes its figure; its numbers are sane."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "transformer_blocks.py"


def test_transformer_blocks_quick(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("transformer_blocks", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "blocks.png"
    summary = module.main(["--quick", "--out", str(out)])
    assert out.stat().st_size > 10_000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    js = np.array(summary["js"])
    # a distance matrix: symmetric, zero diagonal, values in [0, 1] (JS distance with base 2)
    assert np.allclose(js, js.T) and np.allclose(np.diag(js), 0) and js.min() >= 0 and js.max() <= 1
    assert {"embed.token", "attn.qkv", "attn.out", "mlp.in", "mlp.out", "layernorm"} <= set(summary["labels"])
    assert "lambda_max" in capsys.readouterr().out
