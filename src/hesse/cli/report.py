"""``hesse report --model file.py:factory``: the demo's analysis on the user's own model.

The factory follows the ``--model`` protocol of ``hesse.cli._model_loader`` (a function returning
``{"model", "loss_fn", "data"}``). ``--checkpoint PATH`` loads a ``state_dict`` (or a dict holding
one under ``"model"`` / ``"state_dict"``) with ``torch.load(weights_only=True)`` before the analysis:
no pickled code runs. ``--train STEPS`` first trains by full-batch gradient descent under the
sharpness monitor (``--lr``, default ``1/lambda_max`` at the start); ``--resume`` continues an
interrupted ``--train`` run from ``OUT/log`` (its monitor log and ``checkpoint.pt``).
"""

from __future__ import annotations

import json
import os


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="sharpness, spectrum and landscape report of your own model",
                       description="Analyse your model's loss Hessian (optionally after monitored full-batch "
                       "gradient descent) and write a report folder: figures, report.json, summary.md.")
    p.add_argument("--model", required=True, metavar="FILE.py:FACTORY",
                   help="a function returning {'model', 'loss_fn', 'data'} (README section 'spectrum')")
    p.add_argument("--checkpoint", metavar="PATH", help="state_dict to load (torch.load(weights_only=True))")
    p.add_argument("--train", type=int, default=0, metavar="STEPS", help="full-batch GD steps before the analysis")
    p.add_argument("--lr", type=float, default=None, help="learning rate for --train (default 1/lambda_max)")
    p.add_argument("--every", type=int, default=10, help="sharpness check every N steps (default 10)")
    p.add_argument("--k", type=int, default=10, help="top eigenvalues at the final point (default 10)")
    p.add_argument("--out", default="hesse-report", help="report folder (default: hesse-report/)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted --train run in OUT/log")
    p.add_argument("--json", action="store_true", help="print every number as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def _load_checkpoint(model, path: str) -> None:
    import torch

    from hesse.cli.main import CLIError

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
    from hesse._progress import message
    from hesse.cli._model_loader import load_model_factory
    from hesse.cli.main import CLIError
    from hesse.diagnostics.report import analyze_training, diagnosis
    from hesse.plot.report import write_report

    verbose = not args.quiet
    if args.train < 0:
        raise CLIError(f"--train must be >= 0 (steps of gradient descent), got {args.train}.")
    if args.every < 1 or args.k < 1:
        raise CLIError("--every and --k must be positive integers.")
    if args.lr is not None and not args.lr > 0:
        raise CLIError(f"--lr must be positive, got {args.lr}.")
    if args.resume and not args.train:
        raise CLIError("--resume continues a --train run: give --train STEPS as well.")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise CLIError(f"--out {args.out!r} exists and is not a directory.")
    prob = load_model_factory(args.model)
    if args.checkpoint:
        _load_checkpoint(prob["model"], args.checkpoint)
        message(f"[report] loaded weights from {args.checkpoint}", verbose)
    result = analyze_training(prob["model"], prob["loss_fn"], prob["data"], train_steps=args.train, lr=args.lr,
                              every=args.every, k=args.k, log_dir=os.path.join(args.out, "log"),
                              resume=args.resume, progress=verbose)
    files = write_report(args.out, result, title=f"hesse report: {args.model}", progress=verbose)
    if not files:  # another rank of a torchrun job: rank 0 writes and prints
        return 0
    with open(files["report.json"]) as fh:
        payload = json.load(fh)
    if args.json:
        print(json.dumps(payload, indent=2))
        return 0
    print("Diagnosis: " + diagnosis(payload))
    print(f"Report written to {args.out}/ ({', '.join(payload['files'])})")
    return 0
