"""``hesse spectrum``: top eigenvalues, trace, density and per-layer table of a model's Hessian."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser(
        "spectrum",
        help="Hessian spectrum of a model: top eigenvalues (Lanczos), trace, density (SLQ)",
        description="Spectrum of the loss Hessian of the demo digits MLP (default) or of a user model "
        "given by --model file.py:factory (a function returning {'model', 'loss_fn', 'data'}).",
    )
    p.add_argument("--model", metavar="FILE.py:FUNC", help="user model factory (see README 'spectrum')")
    p.add_argument("--k", type=int, default=5, help="number of eigenvalues (default 5)")
    p.add_argument("--which", default="largest", choices=["largest", "smallest", "both", "magnitude"])
    p.add_argument("--tol", type=float, default=1e-6, help="residual tolerance relative to ||H|| (default 1e-6)")
    p.add_argument("--trace", action="store_true", help="also estimate the trace (XTrace) with its standard error")
    p.add_argument("--trace-matvecs", type=int, default=100, help="products for --trace (default 100)")
    p.add_argument("--density", action="store_true", help="also compute the spectral density (SLQ)")
    p.add_argument("--probes", type=int, default=4, help="SLQ probes for --density (default 4)")
    p.add_argument("--steps", type=int, default=60, help="Lanczos steps per probe for --density (default 60)")
    p.add_argument("--per-layer", action="store_true", help="also a per-layer table (lambda_max, lambda_min, trace)")
    p.add_argument("--plot", metavar="OUT.png", help="save a figure (density if --density, else eigenvalues)")
    p.add_argument("--json", action="store_true", help="print every number as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--seed", type=int, default=0, help="random seed (start vector and probes)")
    p.set_defaults(func=run)


def run(args) -> int:
    import hesse
    from hesse._progress import message
    from hesse.cli.main import CLIError

    verbose = not args.quiet
    if args.k < 1:
        raise CLIError(f"--k must be a positive integer, got {args.k}.")
    if args.plot and not args.plot.lower().endswith((".png", ".pdf", ".svg")):
        raise CLIError(f"--plot expects a .png, .pdf or .svg path, got {args.plot!r}.")
    if args.model:
        from hesse.cli._model_loader import load_model_factory

        message(f"loading {args.model}", verbose)
        prob = load_model_factory(args.model)
        source = args.model
    else:
        from hesse.demo_models import digits_mlp_problem

        message("no --model given: the demo MLP trained briefly on scikit-learn digits", verbose)
        prob = digits_mlp_problem()
        source = "demo: digits MLP"
    op = hesse.HessianOperator(prob["model"], prob["loss_fn"], prob["data"])
    message(f"Hessian operator: n={op.shape[0]} parameters, loss={op.loss:.6g}", verbose)
    out: dict = {"model": source, "num_parameters": op.shape[0], "loss": op.loss}
    res = hesse.eigsh(op, k=min(args.k, op.shape[0]), which=args.which, tol=args.tol, seed=args.seed,
                      progress=verbose)
    out["eigenvalues"] = {
        "which": args.which, "values": res.values.tolist(), "residuals": res.residuals.tolist(),
        "converged": res.converged.tolist(), "num_matvecs": res.num_matvecs, "method": res.method,
    }
    if args.trace:
        tr = hesse.trace(op, "xtrace", num_matvecs=args.trace_matvecs, seed=args.seed, progress=verbose)
        out["trace"] = {"value": tr.value, "stderr": tr.stderr, "method": tr.method, "num_matvecs": tr.num_matvecs}
    dens = None
    if args.density:
        dens = hesse.spectral_density(op, num_probes=args.probes, num_steps=args.steps, seed=args.seed,
                                      progress=verbose)
        out["density"] = {"grid": dens.grid.tolist(), "density": dens.density.tolist(),
                          "stderr": dens.stderr.tolist(), "nodes": dens.nodes.tolist(),
                          "weights": dens.weights.tolist(), "sigma": dens.sigma,
                          "num_matvecs": dens.num_matvecs}
    if args.per_layer:
        model, loss_fn, data = prob["model"], prob["loss_fn"], prob["data"]
        table = hesse.per_layer(lambda names: hesse.HessianOperator(model, loss_fn, data, params=names),
                                hesse.layer_groups(model), seed=args.seed, progress=verbose)
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
    print(f"model: {source}   parameters: {op.shape[0]}   loss: {op.loss:.6g}")
    print(f"{args.which} eigenvalues ({res.method}, {res.num_matvecs} Hessian-vector products):")
    for i, (v, r, c) in enumerate(zip(res.values.tolist(), res.residuals.tolist(), res.converged.tolist())):
        print(f"  lambda_{i + 1:<3d} {v: .10g}   residual {r:.1e}{'' if c else '   NOT CONVERGED'}")
    if args.trace:
        t = out["trace"]
        print(f"trace: {t['value']:.6g} ± {t['stderr']:.2g} (XTrace, {t['num_matvecs']} products)")
    if dens is not None:
        print(f"density: {dens.num_probes} probes x {dens.num_steps} steps, nodes in "
              f"[{float(dens.nodes.min()):.4g}, {float(dens.nodes.max()):.4g}], sigma {dens.sigma:.3g}")
    if args.per_layer:
        print(table.table)
    return 0
