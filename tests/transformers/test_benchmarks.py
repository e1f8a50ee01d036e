"""The transformer benchmark scripts parse their arguments, and bench_gpu refuses to run its full
benchmark without CUDA (a --quick smoke run on CPU takes longer than a test should: ~12 s)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.parametrize("script", ["bench_transformers.py", "bench_gpu.py"])
def test_help(script):
    out = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "--quick" in out.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
@pytest.mark.parametrize("args", [[], ["--device", "cpu"]])
def test_gpu_bench_refuses_without_cuda(args, capsys):
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(args) is None  # the script exits with status 1 on None
    assert "--device cpu --quick" in capsys.readouterr().err
