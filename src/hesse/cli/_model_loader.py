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

Optional keys of the dict (the keyword arguments of :class:`hesse.HessianOperator` of the same
names):

- ``forward``: callable ``(model, inputs) -> outputs tensor``, for a model whose outputs are not
  ``model(inputs)`` (``model(**inputs)`` is the default for a dict of inputs), e.g. a Hugging Face
  model: ``"forward": lambda m, batch: m(**batch).logits``.
- ``batch_loss``: callable ``(model, batch) -> scalar mean loss``, *instead of* ``loss_fn``, for a
  model that computes its own loss (``lambda m, b: m(**b).loss``); a batch of ``data`` may then be
  any object (a dict, a tuple), and a single dict or tensor pair is one batch. ``hesse report``'s
  ``--curvature ggn|fisher`` need outputs and ``loss_fn``.
- ``batch_size``: callable ``batch -> int``, the weight of a batch in the mean loss (default: the
  leading dimension of the targets, or with ``batch_loss`` of the first tensor in the batch).

The precision curvature is computed in is the command's ``--dtype`` (the operators' ``dtype=``).

After loading, :func:`prepare_problem` reads the data once (a one-shot iterator is kept as a list),
keeps the first ``--batches N`` batches, moves model and batches to ``--device`` and evaluates the
model and loss on every batch once, so that a mistake in the user's data or model (integer inputs,
float targets for cross-entropy, a wrong feature size, a loader that raises) is reported as one line
naming the batch and the fix, before any curvature is computed. :func:`build_operator` builds the
curvature matrix chosen by ``--curvature``.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from hesse.cli._errors import CLIError
from hesse.operators import FisherOperator, GGNOperator, HessianOperator
from hesse.operators.evaluation import default_forward

__all__ = ["load_model_factory", "prepare_problem", "build_operator", "check_device", "check_output_path",
           "check_dtype", "loss_options", "CURVATURES", "DTYPES"]

#: ``--curvature`` choices: the loss Hessian, the generalized Gauss-Newton matrix, the Fisher
#: (FisherOperator's default kind, the empirical Fisher).
CURVATURES = ("hessian", "ggn", "fisher")

#: ``--dtype`` choices: the floating types curvature can be computed in.
DTYPES = ("float32", "float64", "bfloat16", "float16")

#: Keys a factory's dict may hold besides ``model`` and ``data``.
_OPTIONAL_KEYS = ("loss_fn", "batch_loss", "forward", "batch_size")


def load_model_factory(spec: str) -> dict:
    """Load ``"path/to/file.py:function"`` and return ``{"model", "loss_fn", "data"}`` (``loss_fn`` is
    ``None`` with ``batch_loss``) and the optional keys the factory gave (module docs).

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
    has_loss = isinstance(out, dict) and ("loss_fn" in out or "batch_loss" in out)
    if not isinstance(out, dict) or not {"model", "data"} <= set(out) or not has_loss:
        got = sorted(out) if isinstance(out, dict) else type(out).__name__
        raise CLIError(f"--model: {func_name}() must return a dict with keys 'model', 'loss_fn', 'data' "
                       f"(or 'batch_loss' instead of 'loss_fn'; or a tuple (model, loss_fn, data)); got {got}.")
    unknown = sorted(set(out) - {"model", "data", *_OPTIONAL_KEYS})
    if unknown:
        raise CLIError(f"--model: {func_name}() returned unknown key(s) {', '.join(map(repr, unknown))}; the keys "
                       f"are 'model', 'data' and {', '.join(map(repr, _OPTIONAL_KEYS))}.")
    if not isinstance(out["model"], torch.nn.Module):
        raise CLIError(f"--model: 'model' must be a torch.nn.Module, got {type(out['model']).__name__}.")
    if out.get("loss_fn") is not None and out.get("batch_loss") is not None:
        raise CLIError("--model: return 'loss_fn' or 'batch_loss', not both (batch_loss(model, batch) already "
                       "gives the loss of a batch).")
    if out.get("batch_loss") is not None and out.get("forward") is not None:
        raise CLIError("--model: 'forward' is not used with 'batch_loss' (batch_loss(model, batch) runs the model "
                       "itself); return 'forward' with 'loss_fn', or 'batch_loss' alone.")
    for key, hint in (("loss_fn", "(outputs, targets) -> loss"), ("batch_loss", "(model, batch) -> loss"),
                      ("forward", "(model, inputs) -> outputs"), ("batch_size", "batch -> int")):
        if out.get(key) is not None and not callable(out[key]):
            raise CLIError(f"--model: '{key}' must be callable {hint}, got {type(out[key]).__name__}.")
    if out.get("loss_fn") is None and out.get("batch_loss") is None:
        raise CLIError("--model: 'loss_fn' is None; return a loss_fn (outputs, targets) -> loss, or batch_loss.")
    optional = {key: out[key] for key in ("batch_loss", "forward", "batch_size") if out.get(key) is not None}
    return {"model": out["model"], "loss_fn": out.get("loss_fn"), "data": out["data"], **optional}


def loss_options(prob: dict) -> dict[str, Any]:
    """The operators' keyword arguments from a loaded problem: ``forward``, ``batch_loss``, ``batch_size``."""
    return {key: prob.get(key) for key in ("forward", "batch_loss", "batch_size")}


def check_dtype(name: str | None):
    """``--dtype``: the ``torch.dtype`` of that name (``None``: the parameters' own)."""
    import torch

    if name is None:
        return None
    if name not in DTYPES:
        raise CLIError(f"--dtype must be one of {', '.join(DTYPES)}, got {name!r}.")
    return getattr(torch, name)


def check_device(spec: str | None):
    """``--device``: a ``torch.device`` that exists on this machine, or a :class:`CLIError` saying why not."""
    import torch

    if spec is None:
        return None
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError) as err:
        raise CLIError(f"--device {spec!r} is not a torch device ({err}); use e.g. cpu, cuda, cuda:1, mps.") from err
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index is not None and device.index >= count):
            raise CLIError(f"--device {spec}: CUDA is not available here ({count} CUDA device(s) visible); "
                           "use --device cpu or run on a machine with a GPU.")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise CLIError(f"--device {spec}: the MPS backend is not available here; use --device cpu.")
    elif device.type == "meta":
        # meta tensors carry shapes but no values: every product and loss would be undefined
        raise CLIError(f"--device {spec}: meta tensors hold no values, so no curvature can be computed "
                       "on them; use --device cpu (or cuda, mps).")
    elif device.type != "cpu":
        try:
            torch.empty(0, device=device)
        except Exception as err:  # noqa: BLE001 -- any backend failure means: not usable here
            raise CLIError(f"--device {spec} is not usable here ({type(err).__name__}: {err}); "
                           "use --device cpu.") from err
    return device


def check_output_path(option: str, path: str | None, suffixes: tuple[str, ...] | None = None) -> None:
    """Refuse an output file whose folder does not exist (or a wrong suffix) before any work is done."""
    if path is None:
        return
    if suffixes and not path.lower().endswith(suffixes):
        raise CLIError(f"{option} expects a {', '.join(suffixes)} path, got {path!r}.")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CLIError(f"{option} {path!r}: the folder {folder!r} does not exist; create it first "
                       f"(mkdir -p {folder}).")
    if os.path.isdir(path):
        raise CLIError(f"{option} {path!r} is a directory; give a file name.")
    if not os.access(folder, os.W_OK):
        raise CLIError(f"{option} {path!r}: the folder {folder!r} is not writable.")


def _to_device(obj: Any, device) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


def _describe(x: Any) -> str:
    import torch

    if isinstance(x, torch.Tensor):
        return f"shape {tuple(x.shape)} {str(x.dtype).replace('torch.', '')}"
    if isinstance(x, (tuple, list)):
        return f"{type(x).__name__} of {len(x)}"
    return type(x).__name__


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}"


def _model_hint(model, x) -> str:
    import torch

    param = next(iter(model.parameters()), None)
    if isinstance(x, torch.Tensor) and param is not None and x.dtype != param.dtype:
        kind = "integer" if not (x.is_floating_point() or x.is_complex()) else str(x.dtype).replace("torch.", "")
        return (f"the inputs are {kind} but the model's parameters are {str(param.dtype).replace('torch.', '')}: "
                f"convert them in the factory (X = X.to({param.dtype}))")
    return ("the inputs do not fit the model: check the feature size (the last dimension of the inputs) "
            "against the model's first layer, and the inputs' dtype and device")


def _loss_hint(loss_fn, out, y) -> str:
    import torch

    if isinstance(loss_fn, (torch.nn.CrossEntropyLoss, torch.nn.NLLLoss)) and isinstance(y, torch.Tensor) \
            and isinstance(out, torch.Tensor) and y.is_floating_point() and y.ndim == out.ndim - 1:
        return "cross-entropy takes class indices as targets: make them integers in the factory (y = y.long())"
    return "check that loss_fn(outputs, targets) accepts the targets (shape, dtype) your data provides"


def prepare_problem(prob: dict, batches: int | None = None, device: Any = None) -> dict:
    """Read the data once, keep the first ``batches`` batches, move to ``device``, evaluate every batch.

    Returns ``prob`` with ``data`` replaced by a list of batches when it had to be read (a one-shot
    iterator, ``batches`` or ``device`` given) and kept otherwise. Errors raised while reading
    batch ``i`` or while evaluating the model or the loss on it become a ``ValueError``
    ``"batch i: ..."`` naming the shapes and the likely fix (a user error: one line, exit status 2).
    The model is evaluated in eval mode (no BatchNorm statistics change) and left in the mode it
    had. Batches are ``(inputs, targets)`` pairs for ``loss_fn`` and any object for ``batch_loss``.
    """
    import torch

    model, data = prob["model"], prob["data"]
    if batches is not None and (isinstance(batches, bool) or not isinstance(batches, int) or batches < 1):
        raise CLIError(f"--batches must be a positive integer, got {batches!r}.")
    pairs = prob.get("batch_loss") is None
    is_pair = (isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor)
               and isinstance(data[1], torch.Tensor))
    one_batch = is_pair or (not pairs and isinstance(data, (Mapping, torch.Tensor)))
    if one_batch:
        source: Any = [tuple(data) if is_pair else data]
    elif isinstance(data, torch.Tensor) or not hasattr(data, "__iter__"):
        raise CLIError(f"--model: 'data' must be a DataLoader, an iterable of (inputs, targets) batches or one "
                       f"(inputs, targets) pair, got {_describe(data)}.")
    else:
        source = data
    materialise = one_batch or batches is not None or device is not None or isinstance(data, Iterator)
    kept: list = []
    count = 0
    try:
        iterator = iter(source)
    except Exception as err:  # noqa: BLE001 -- the user's data object failed: one line, exit 2
        raise CLIError(f"--model: iterating 'data' raised {_first_line(err)}; check the data set or loader.") from err
    if batches is not None:
        iterator = itertools.islice(iterator, batches)
    was_training = model.training
    if device is not None:
        model.to(device)
    model.eval()  # evaluate as the operators do (eval mode): no running statistics move
    try:
        for i in itertools.count():
            try:
                batch = next(iterator)
            except StopIteration:
                break
            except Exception as err:  # noqa: BLE001
                raise ValueError(f"batch {i}: reading it from 'data' raised {_first_line(err)}; check the data "
                                 "set or loader (files, paths, workers).") from err
            if pairs and (not isinstance(batch, (tuple, list)) or len(batch) != 2):
                raise ValueError(f"batch {i}: expected a pair (inputs, targets), got {_describe(batch)}.")
            if device is not None:
                batch = _to_device(batch, device)
            _check_batch(prob, i, batch)
            count += 1
            if materialise:
                kept.append(tuple(batch) if pairs else batch)
    finally:
        model.train(was_training)
    if not count:
        raise CLIError("--model: 'data' holds no batches (an empty data set, or an iterator already consumed).")
    if batches is not None and count < batches:
        raise CLIError(f"--batches {batches}: the data has only {count} batch(es); give --batches {count} "
                       "or fewer.")
    out = dict(prob)
    if materialise:
        out["data"] = kept
    return out


def _check_batch(prob: dict, i: int, batch: Any) -> None:
    """Evaluate the loss of batch ``i`` once (no gradient); a failure or a bad loss is a ValueError naming it."""
    import torch


    model, loss_fn, batch_loss = prob["model"], prob.get("loss_fn"), prob.get("batch_loss")
    with torch.no_grad():
        if batch_loss is not None:
            try:
                loss = batch_loss(model, batch)
            except Exception as err:  # noqa: BLE001
                raise ValueError(f"batch {i}: batch_loss failed on a batch of {_describe(batch)} "
                                 f"({_first_line(err)}); check that batch_loss(model, batch) accepts the batches "
                                 "your data provides.") from err
            what = "batch_loss"
        else:
            if loss_fn is None:
                raise CLIError("--model: the factory returned neither 'loss_fn' nor 'batch_loss'.")
            x, y = batch
            forward = prob.get("forward") or default_forward
            try:
                out = forward(model, x)
            except Exception as err:  # noqa: BLE001
                raise ValueError(f"batch {i}: the model failed on inputs of {_describe(x)} ({_first_line(err)}); "
                                 f"{_model_hint(model, x)}.") from err
            if not isinstance(out, torch.Tensor):
                raise ValueError(f"batch {i}: the model returned a {type(out).__name__}, not a tensor of outputs; "
                                 "return 'forward': lambda m, inputs: ... (e.g. m(**inputs).logits) from the factory.")
            try:
                loss = loss_fn(out, y)
            except Exception as err:  # noqa: BLE001
                raise ValueError(f"batch {i}: loss_fn failed on outputs of {_describe(out)} and targets of "
                                 f"{_describe(y)} ({_first_line(err)}); {_loss_hint(loss_fn, out, y)}.") from err
            what = "loss_fn"
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError(f"batch {i}: {what} must return a scalar tensor (the mean loss), got "
                         f"{_describe(loss)}; use reduction='mean'.")
    if not bool(torch.isfinite(loss).all()):
        raise ValueError(f"batch {i}: the loss is {float(loss)} at the starting weights; the batch or the "
                         "model's weights hold NaN/inf (check the data set and any --checkpoint).")


def build_operator(kind: str, prob: dict, params: Any = None, dtype: Any = None, eval_mode: bool = True):
    """The curvature operator of ``--curvature`` on a loaded problem: Hessian, GGN or Fisher
    (FisherOperator's default kind), in precision ``dtype`` (``None``: the parameters'), evaluated
    in eval mode unless ``eval_mode`` is false (``--train-mode``)."""

    if kind not in CURVATURES:
        raise CLIError(f"--curvature must be one of {', '.join(CURVATURES)}, got {kind!r}.")
    if kind != "hessian" and prob.get("batch_loss") is not None:
        raise CLIError(f"--curvature {kind} needs the model's outputs and a loss_fn(outputs, targets); the factory "
                       "returns batch_loss (the loss only). Use --curvature hessian, or return 'loss_fn' (and "
                       "'forward') instead.")
    cls = {"hessian": HessianOperator, "ggn": GGNOperator, "fisher": FisherOperator}[kind]
    return cls(prob["model"], prob.get("loss_fn"), prob["data"], params, dtype=dtype, eval_mode=eval_mode,
               **loss_options(prob))
