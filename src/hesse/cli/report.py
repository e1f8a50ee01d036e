"""``hesse report --model file.py:factory``: the demo's analysis on the user's own model.

The factory follows the ``--model`` protocol of ``hesse.cli._model_loader`` (a function returning
``{"model", "loss_fn", "data"}``). ``--checkpoint PATH`` loads a ``state_dict`` (or a dict holding
one under ``"model"`` / ``"state_dict"``) with ``torch.load(weights_only=True)`` before the analysis:
no pickled code runs. ``--train STEPS`` first trains by full-batch gradient descent under the
sharpness monitor (``--lr``, default ``1/lambda_max`` at the start); ``--resume`` continues an
interrupted ``--train`` run from ``OUT/log`` (its monitor log and ``checkpoint.pt``), whatever the
moment of the interruption. ``--batches N``, ``--curvature hessian|ggn|fisher``, ``--device`` and
``--dtype`` work as for ``hesse spectrum`` (the curvature matrix of the final-point analysis; the
sharpness monitor measures the Hessian, whose λ_max the stability limit 2/lr is about). A factory may
return ``forward`` or ``batch_loss`` (see :mod:`hesse.cli._model_loader`).

Exit status: 0 for a report, 2 for a user error (one line), 3 when the report was written but the
training diverged (its diagnosis says so). A run that fails removes an earlier ``report.json`` /
``summary.md`` in ``--out``: they would describe a run the new log does not belong to.
"""

from __future__ import annotations

import json
import os

from hesse._progress import message
from hesse.cli._errors import CLIError
from hesse.cli._model_loader import (
    check_device,
    check_dtype,
    load_model_factory,
    loss_options,
    prepare_problem,
)
from hesse.cli._options import (
    add_k,
    add_lr,
    add_model,
    add_out,
    add_output,
    add_seed,
    add_train_mode,
)
from hesse.cli.spectrum import add_data_options
from hesse.diagnostics.report import analyze_training, diagnosis, training_divergence

#: Exit status of a report whose training diverged (the report is written; its diagnosis says so).
DIVERGED_EXIT_STATUS = 3


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="sharpness, spectrum and landscape report of your own model",
                       description="Analyse your model's loss Hessian (optionally after monitored full-batch "
                       "gradient descent) and write a report folder: figures, report.json, summary.md.")
    add_model(p, required=True)
    p.add_argument("--checkpoint", metavar="PATH", help="state_dict to load (torch.load(weights_only=True))")
    p.add_argument("--train", type=int, default=0, metavar="STEPS", help="full-batch GD steps before the analysis")
    add_lr(p, "learning rate for --train (default 1/lambda_max at the start)")
    p.add_argument("--every", type=int, default=10, metavar="N", help="sharpness check every N steps (default 10)")
    add_k(p, "at the final point")
    add_seed(p, "start vectors, probes and landscape directions")
    add_train_mode(p)
    add_out(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted --train run in DIR/log")
    add_output(p)

    add_data_options(p)
    p.set_defaults(func=run)


def _load_checkpoint(model, path: str) -> None:
    import torch


    if not os.path.isfile(path):
        raise CLIError(f"--checkpoint: file {path!r} not found.")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 -- one line for the user
        raise CLIError(f"--checkpoint: {path!r} is not a weights-only checkpoint ({type(err).__name__}: "
                       f"{str(err).splitlines()[0][:200]}); save it with torch.save(model.state_dict(), path).") from err
    if isinstance(state, dict) and ("model" in state or "state_dict" in state) and not any(
            isinstance(v, torch.Tensor) for v in state.values()):
        state = state.get("model", state.get("state_dict"))
    if not isinstance(state, dict):
        raise CLIError(f"--checkpoint: expected a state_dict, got {type(state).__name__}.")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CLIError(f"--checkpoint: does not fit the model: {str(err).splitlines()[0][:300]}") from err


def run(args) -> int:
    from hesse.plot.report import remove_stale_report, write_report

    verbose = not args.quiet
    if args.train < 0:
        raise CLIError(f"--train must be >= 0 (steps of gradient descent), got {args.train}.")
    if args.every < 1 or args.k < 1:
        raise CLIError("--every and --k must be positive integers.")
    if args.lr is not None and not args.lr > 0:
        raise CLIError(f"--lr must be positive, got {args.lr}.")
    if args.resume and not args.train:
        raise CLIError("--resume continues a --train run: give --train STEPS as well.")
    if args.batches is not None and args.batches < 1:
        raise CLIError(f"--batches must be a positive integer, got {args.batches}.")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise CLIError(f"--out {args.out!r} exists and is not a directory.")
    parent = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(parent):
        raise CLIError(f"--out {args.out!r}: the folder {parent!r} does not exist; create it first "
                       f"(mkdir -p {parent}).")
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        raise CLIError(f"--checkpoint: file {args.checkpoint!r} not found.")
    device = check_device(args.device)
    dtype = check_dtype(args.dtype)
    prob = load_model_factory(args.model)
    if args.checkpoint:
        _load_checkpoint(prob["model"], args.checkpoint)
        message(f"[report] loaded weights from {args.checkpoint}", verbose)
    prob = prepare_problem(prob, batches=args.batches, device=device)
    n = sum(p.numel() for p in prob["model"].parameters() if p.requires_grad)
    if args.curvature != "hessian" and prob.get("batch_loss") is not None:
        raise CLIError(f"--curvature {args.curvature} needs the model's outputs and a loss_fn(outputs, targets); "
                       "the factory returns batch_loss (the loss only). Use --curvature hessian, or return "
                       "'loss_fn' (and 'forward') instead.")
    if args.k > n:
        raise CLIError(f"--k {args.k} exceeds the number of parameters n={n}; ask for at most {n} eigenvalues.")
    try:
        result = analyze_training(prob["model"], prob["loss_fn"], prob["data"], train_steps=args.train,
                                  lr=args.lr, every=args.every, k=args.k, log_dir=os.path.join(args.out, "log"),
                                  resume=args.resume, curvature=args.curvature, progress=verbose, dtype=dtype,
                                  seed=args.seed, eval_mode=not args.train_mode,
                                  **loss_options(prob))
        files = write_report(args.out, result, title=f"hesse report: {args.model}", progress=verbose)
    except BaseException:
        # the earlier report in --out describes another run than the log now there: remove it
        for path in remove_stale_report(args.out):
            message(f"[report] removed {path} (an earlier run's report; this run failed)", verbose)
        raise
    if not files:  # another rank of a torchrun job: rank 0 writes and prints
        return 0
    with open(files["report.json"]) as fh:
        payload = json.load(fh)
    status = DIVERGED_EXIT_STATUS if args.train and training_divergence(
        payload["records"], payload["training_losses"]) is not None else 0
    if args.json:
        print(json.dumps(payload, indent=2))
        return status
    print("Diagnosis: " + diagnosis(payload))
    print(f"Report written to {args.out}/ ({', '.join(payload['files'])})")
    return status
