"""The ``--model file.py:factory`` protocol shared by ``hesse spectrum`` and ``hesse report``.

``file.py`` defines a function ``factory()`` (no arguments) returning either a dict with keys
``model`` (a ``torch.nn.Module``), ``loss_fn`` (callable ``(outputs, targets) -> scalar``, the mean
over samples) and ``data`` (a DataLoader, an iterable of ``(inputs, targets)``, or one
``(inputs, targets)`` pair), or a tuple ``(model, loss_fn, data)`` in that order. Example::

    # mymodel.py
    import torch
    def make():
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        X, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
        return {"model": model, "loss_fn": torch.nn.CrossEntropyLoss(), "data": (X, y)}

    $ hesse spectrum --model mymodel.py:make
"""

from __future__ import annotations

import importlib.util
import os
import sys

from hesse.cli.main import CLIError

__all__ = ["load_model_factory"]


def load_model_factory(spec: str) -> dict:
    """Load ``"path/to/file.py:function"`` and return ``{"model", "loss_fn", "data"}``.

    Raises :class:`CLIError` with a one-line message for a malformed spec, a missing file, a missing
    function, an exception inside the factory, or a return value that does not follow the protocol.
    """
    import torch

    if not isinstance(spec, str) or ":" not in spec:
        raise CLIError(f"--model expects 'file.py:function', got {spec!r} (e.g. --model mymodel.py:make).")
    path, func_name = spec.rsplit(":", 1)
    if not path or not func_name:
        raise CLIError(f"--model expects 'file.py:function', got {spec!r}.")
    if not os.path.isfile(path):
        raise CLIError(f"--model: file {path!r} not found (working directory {os.getcwd()!r}).")
    mod_name = f"_hesse_user_model_{abs(hash(os.path.abspath(path)))}"
    loader_spec = importlib.util.spec_from_file_location(mod_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise CLIError(f"--model: cannot import {path!r} as a Python file.")
    module = importlib.util.module_from_spec(loader_spec)
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    try:
        loader_spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 -- the user's file failed: report it in one line
        raise CLIError(f"--model: importing {path!r} failed: {type(err).__name__}: {err}") from err
    finally:
        sys.path.pop(0)
    factory = getattr(module, func_name, None)
    if factory is None:
        names = [n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_")]
        raise CLIError(f"--model: {path!r} defines no function {func_name!r} (callables found: {', '.join(names) or 'none'}).")
    if not callable(factory):
        raise CLIError(f"--model: {func_name!r} in {path!r} is not callable.")
    try:
        out = factory()
    except Exception as err:  # noqa: BLE001
        raise CLIError(f"--model: {func_name}() raised {type(err).__name__}: {err}") from err
    if isinstance(out, (tuple, list)) and len(out) == 3:
        out = {"model": out[0], "loss_fn": out[1], "data": out[2]}
    if not isinstance(out, dict) or not {"model", "loss_fn", "data"} <= set(out):
        got = sorted(out) if isinstance(out, dict) else type(out).__name__
        raise CLIError(f"--model: {func_name}() must return a dict with keys 'model', 'loss_fn', 'data' "
                       f"(or a tuple in that order); got {got}.")
    if not isinstance(out["model"], torch.nn.Module):
        raise CLIError(f"--model: 'model' must be a torch.nn.Module, got {type(out['model']).__name__}.")
    if not callable(out["loss_fn"]):
        raise CLIError(f"--model: 'loss_fn' must be callable (outputs, targets) -> loss, got {type(out['loss_fn']).__name__}.")
    return {"model": out["model"], "loss_fn": out["loss_fn"], "data": out["data"]}
