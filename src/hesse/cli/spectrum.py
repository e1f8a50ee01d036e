"""``hesse spectrum``: top eigenvalues, trace, density and per-layer table of a model's Hessian.

PyHessian's habits carry over: ``--batches N`` analyses the first N batches of the data only,
``--curvature hessian|ggn|fisher`` picks the curvature matrix (Fisher: the empirical Fisher,
FisherOperator's default kind), ``--device`` moves model and batches (e.g. ``cuda``).
"""

from __future__ import annotations

import json

from hesse._progress import message
from hesse.cli._errors import CLIError
from hesse.cli._model_loader import (
    CURVATURES,
    DTYPES,
    build_operator,
    check_device,
    check_dtype,
    check_output_path,
    load_model_factory,
    prepare_problem,
)
from hesse.cli._options import add_k, add_model, add_output, add_plot, add_seed, add_train_mode
from hesse.demo_models import digits_mlp_problem
from hesse.spectrum import eigsh, outliers, spectral_density, trace
from hesse.spectrum.analysis import OUTLIER_FACTOR
from hesse.spectrum.per_layer import layer_groups, per_layer


def add_parser(sub) -> None:
    p = sub.add_parser(
        "spectrum",
        help="Hessian spectrum of a model: top eigenvalues (Lanczos), trace, density (SLQ)",
        description="Spectrum of the loss Hessian of the demo digits MLP (default) or of a user model "
        "given by --model FILE.py:FACTORY (a function returning {'model', 'loss_fn', 'data'}).",
    )
    add_model(p, required=False, default_text="; default: the demo digits MLP")
    add_k(p, "(or smallest, see --which)")
    p.add_argument("--which", default="largest", choices=["largest", "smallest", "both", "magnitude"],
                   help="which end of the spectrum: largest (default), smallest, both ends, or largest in magnitude")
    p.add_argument("--tol", type=float, default=1e-6, metavar="TOL",
                   help="residual tolerance relative to ||H|| (default 1e-6)")
    p.add_argument("--trace", action="store_true", help="also estimate the trace (XTrace) with its standard error")
    p.add_argument("--trace-matvecs", type=int, default=100, metavar="N",
                   help="products for --trace (default 100; at least the parameter count gives the exact trace)")
    p.add_argument("--density", action="store_true", help="also compute the spectral density (SLQ)")
    p.add_argument("--probes", type=int, default=4, metavar="N", help="SLQ probes for --density (default 4)")
    p.add_argument("--steps", type=int, default=60, metavar="N",
                   help="Lanczos steps per probe for --density (default 60)")
    p.add_argument("--per-layer", action="store_true", help="also a per-layer table (lambda_max, lambda_min, trace)")
    add_plot(p, "a figure (density if --density, else eigenvalues)")
    add_seed(p, "start vector and probes")
    add_train_mode(p)
    add_output(p)
    add_data_options(p)
    p.set_defaults(func=run)


def add_data_options(p) -> None:
    """``--batches``, ``--curvature``, ``--device``, ``--dtype``: shared by ``spectrum`` and ``report``."""

    p.add_argument("--batches", type=int, default=None, metavar="N",
                   help="analyse only the first N batches of the data (default: all)")
    p.add_argument("--curvature", default="hessian", choices=CURVATURES,
                   help="curvature matrix: the loss Hessian (default), the generalized Gauss-Newton matrix, "
                   "or the (empirical) Fisher")
    p.add_argument("--device", default=None, metavar="DEVICE", help="move model and batches to this device (cpu, cuda, cuda:1, mps)")
    p.add_argument("--dtype", default=None, choices=DTYPES,
                   help="precision the curvature is computed in (default: the parameters' dtype), e.g. float32 "
                   "for a bfloat16 model; the model itself is not changed")


def run(args) -> int:

    verbose = not args.quiet
    if args.k < 1:
        raise CLIError(f"--k must be a positive integer, got {args.k}.")
    if args.batches is not None and args.batches < 1:
        raise CLIError(f"--batches must be a positive integer, got {args.batches}.")
    check_output_path("--plot", args.plot, (".png", ".pdf", ".svg"))
    device = check_device(args.device)
    dtype = check_dtype(args.dtype)
    if args.model:

        message(f"loading {args.model}", verbose)
        prob = load_model_factory(args.model)
        source = args.model
    else:

        message("no --model given: the demo MLP trained briefly on scikit-learn digits", verbose)
        prob = digits_mlp_problem()
        source = "demo: digits MLP"
    prob = prepare_problem(prob, batches=args.batches, device=device)
    op = build_operator(args.curvature, prob, dtype=dtype, eval_mode=not args.train_mode)
    name = {"hessian": "Hessian", "ggn": "GGN", "fisher": "Fisher"}[args.curvature]
    message(f"{name} operator: n={op.shape[0]} parameters, loss={op.loss:.6g}", verbose)
    out: dict = {"model": source, "curvature": args.curvature, "num_parameters": op.shape[0], "loss": op.loss,
                 "dtype": str(op.dtype).replace("torch.", "")}
    if args.batches is not None:
        out["batches"] = args.batches
    # k > n is refused by eigsh with its own message (a ValueError: exit status 2), never clamped
    res = eigsh(op, k=args.k, which=args.which, tol=args.tol, seed=args.seed, progress=verbose)
    out["eigenvalues"] = {
        "which": args.which, "values": res.values.tolist(), "residuals": res.residuals.tolist(),
        "converged": res.converged.tolist(), "num_matvecs": res.num_matvecs, "method": res.method,
    }
    if args.trace:
        tr = trace(op, "xtrace", num_matvecs=args.trace_matvecs, seed=args.seed, progress=verbose)
        out["trace"] = {"value": tr.value, "stderr": tr.stderr, "method": tr.method, "num_matvecs": tr.num_matvecs}
    dens = None
    if args.density:
        dens = spectral_density(op, num_probes=args.probes, num_steps=args.steps, seed=args.seed,
                                      progress=verbose)
        out["density"] = {"grid": dens.grid.tolist(), "density": dens.density.tolist(),
                          "stderr": dens.stderr.tolist(), "nodes": dens.nodes.tolist(),
                          "weights": dens.weights.tolist(), "sigma": dens.sigma,
                          "num_matvecs": dens.num_matvecs}
    found = None
    if args.which == "largest" and res.values.numel() >= 2:
        found = outliers(res, dens)
        out["outliers"] = found.as_dict()
    if args.per_layer:
        table = per_layer(lambda names: build_operator(args.curvature, prob, params=names, dtype=dtype,
                                                      eval_mode=not args.train_mode),
                          layer_groups(prob["model"]), seed=args.seed, progress=verbose)
        out["per_layer"] = table.as_dicts()
    if args.plot:
        from hesse.plot.spectrum import plot_spectral_density, plot_top_eigenvalues

        fig = plot_spectral_density(dens) if dens is not None else plot_top_eigenvalues(res)
        fig.savefig(args.plot)
        out["plot"] = args.plot
        message(f"figure saved to {args.plot}", verbose)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"model: {source}   parameters: {op.shape[0]}   loss: {op.loss:.6g}   curvature: {name}")
    print(f"{args.which} eigenvalues ({res.method}, {res.num_matvecs} {name}-vector products):")
    for i, (v, r, c) in enumerate(zip(res.values.tolist(), res.residuals.tolist(), res.converged.tolist())):
        print(f"  lambda_{i + 1:<3d} {v: .10g}   residual {r:.1e}{'' if c else '   NOT CONVERGED'}")
    if args.trace:
        t = out["trace"]
        how = "exact" if t["method"] == "exact" else "XTrace"
        print(f"trace: {t['value']:.6g} ± {t['stderr']:.2g} ({how}, {t['num_matvecs']} products)")
    if dens is not None:
        print(f"density: {dens.num_probes} probes x {dens.num_steps} steps, nodes in "
              f"[{float(dens.nodes.min()):.4g}, {float(dens.nodes.max()):.4g}], sigma {dens.sigma:.3g}")
    if found is not None:
        if found.method == "bulk edge":
            more = " (every eigenvalue asked for: raise --k for more)" if found.at_least else ""
            print(f"outliers: {found.num_outliers} above {OUTLIER_FACTOR:g}x the bulk edge "
                  f"{found.bulk_edge:.3g}{more}")
        else:
            ratio = found.gap_ratios[found.largest_gap - 1]
            print(f"largest gap: after lambda_{found.largest_gap} (ratio {ratio:.3g}); --density "
                  f"gives the bulk edge")
    if args.per_layer:
        print(table.table)
    return 0
