"""The package's shape: public API exported, layers importing only downwards, CLI entry point."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

import hesse
import hesse.distributed

SRC = Path(hesse.__file__).resolve().parent

# what each layer may import from hesse (STYLE.md: arrows point down)
LAYER = {
    "_autodiff": 0, "_validation": 0, "_memory": 0, "_progress": 0, "_result": 0, "_linalg": 0,
    "_blocks": 0,
    "distributed": 1, "operators": 2,
    "spectrum": 3, "geometry": 3, "optimize": 3, "optim": 3, "laplace": 3, "influence": 3,
    "diagnostics": 4, "demo_models": 4, "testing": 4,
    "plot": 5, "cli": 6,
}


def _layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "hesse" or len(parts) < 2:
        return None
    return LAYER.get(parts[1])


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    rel = path.relative_to(SRC.parent).with_suffix("")
    pkg = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:
                    out += [f"{mod}.{a.name}" for a in node.names]
                else:
                    out.append(mod)
            elif node.module:
                out.append(node.module)
    return out


def test_lower_layers_never_import_higher_ones():
    violations = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        top = rel.parts[0].removesuffix(".py")
        if top == "__init__":
            continue
        own = LAYER.get(top)
        assert own is not None, f"module {rel} has no layer in this test; add it to LAYER"
        for mod in _imports(path):
            other = _layer_of(mod)
            if other is not None and other > own and not mod.startswith(f"hesse.{top}"):
                violations.append(f"{rel} imports {mod}")
    assert not violations, "\n".join(violations)


# Process-group plumbing and algorithm engines: reachable in their subpackage, not at the top.
PLUMBING = ("all_reduce_sum", "sync_errors", "announce_once", "launched_by_torchrun", "is_initialized",
            "init_from_env", "get_rank", "get_world_size", "resolve_group", "shard", "print_once",
            "is_main_process", "torchrun_session", "higher_order_analysis", "MethodSpec", "METHODS",
            "resolve_method", "definiteness_verdict", "KINDS")


def test_public_api_is_curated():
    # the jobs a user comes for (derivatives, operators, spectra, critical points, optimization,
    # Laplace, influence, training diagnostics) and their results; the rest lives in subpackages
    assert len(hesse.__all__) <= 55, f"{len(hesse.__all__)} top-level names; keep the front door small"
    assert len(set(hesse.__all__)) == len(hesse.__all__)
    for name in hesse.__all__:
        obj = getattr(hesse, name)  # AttributeError names what is listed but missing
        doc = obj.__doc__ or ""
        # a dataclass without a docstring gets its signature "Name(field, ...)" as __doc__
        assert doc.strip() and not doc.startswith(f"{name}("), f"hesse.{name} has no docstring"
    for name in ("gradient", "hessian", "hvp", "jacobian", "check_hessian", "HessianOperator",
                 "GGNOperator", "FisherOperator", "KFACOperator", "DenseOperator", "CurvatureOperator",
                 "solve", "eigsh", "minimize"):
        assert name in hesse.__all__, name
    leaked = [name for name in PLUMBING if hasattr(hesse, name)]
    assert not leaked, f"plumbing at the top level: {leaked}"


def test_plumbing_lives_in_its_subpackage():
    import hesse.geometry
    import hesse.optimize

    for name in ("torchrun_session", "init_from_env", "get_rank", "get_world_size", "all_reduce_sum",
                 "sync_errors", "is_initialized", "launched_by_torchrun", "DistributedError"):
        assert hasattr(hesse.distributed, name), name
    assert callable(hesse.geometry.higher_order_analysis)
    assert "bfgs" in {m.lower() for m in hesse.optimize.METHODS}


def test_solve_is_the_operator_solve():
    # 2x2 SPD system with a closed-form answer: [[4, 1], [1, 3]] x = [1, 2] -> x = [1/11, 7/11];
    # CG converges in n = 2 steps, so 1e-10 is float64 round-off, not the tolerance of a truncation.
    import torch

    op = hesse.DenseOperator(torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64))
    res = hesse.solve(op, torch.tensor([1.0, 2.0], dtype=torch.float64), tol=1e-12)
    assert isinstance(res, hesse.LinearSolveResult) and res.converged
    torch.testing.assert_close(res.x, torch.tensor([1 / 11, 7 / 11], dtype=torch.float64), rtol=0, atol=1e-10)


# third-party packages the library imports inside functions because they are optional extras
OPTIONAL_DEPS = {"matplotlib", "mpl_toolkits", "sympy", "tqdm", "sklearn", "transformers", "tensorboard",
                 "torch.utils.tensorboard", "lightning", "pytorch_lightning", "scipy"}


def _resolved(path: Path, node: ast.ImportFrom) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    pkg = list(rel.parts[:-1])
    if not node.level:
        return node.module or ""
    base = pkg[: len(pkg) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


@functools.cache
def _import_rule_violations() -> tuple[str, ...]:
    """Every import in src/hesse that breaks one of the three rules, as ``file:line: what``.

    (a) no library module imports the package root (``import hesse``, ``from hesse import x``):
        the root imports every subpackage, so a module that needs it depends on everything;
    (b) no function-local import of a hesse module (it hides a dependency, usually a cycle);
        ``hesse.plot`` is the exception: it is the matplotlib boundary, an optional extra;
    (c) private names (``_x`` modules or names) are imported only inside their own subpackage or
        from the top-level private modules ``hesse._*``.
    """
    out: set[tuple[str, int, str]] = set()
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel == Path("__init__.py"):
            continue
        own = rel.parts[0].removesuffix(".py")
        tree = ast.parse(path.read_text())
        local = {id(n) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                pairs = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                pairs = [(_resolved(path, node), a.name) for a in node.names]
            else:
                continue
            for mod, name in pairs:
                parts = mod.split(".")
                if parts[0] != "hesse":
                    continue
                shown = f"{mod}.{name}" if name else mod
                if mod == "hesse":
                    out.add((str(rel), node.lineno, f"imports the package root ({shown})"))
                if id(node) in local and (len(parts) < 2 or parts[1] != "plot"):
                    out.add((str(rel), node.lineno, f"function-local import of {shown}"))
                private = [p for p in parts[2:] if p.startswith("_")]
                if name and name.startswith("_") and not name.startswith("__"):
                    private.append(name)
                if len(parts) > 1 and not parts[1].startswith("_") and parts[1] != own and private:
                    out.add((str(rel), node.lineno, f"private import {shown} from hesse.{parts[1]}"))
    return tuple(f"src/hesse/{f}:{line}: {what}" for f, line, what in sorted(out))


def test_imports_follow_the_house_rules():
    violations = _import_rule_violations()
    assert not violations, f"{len(violations)} import-rule violations:\n" + "\n".join(violations)


def test_no_library_module_chooses_the_matplotlib_backend():
    calls = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "use"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ("matplotlib", "mpl")):
                calls.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not calls, f"matplotlib.use in the library (it would switch the user's backend): {calls}"


def test_plot_keeps_the_users_backend():
    mpl = pytest.importorskip("matplotlib")
    import torch

    from hesse.plot.spectrum import plot_top_eigenvalues
    from hesse.spectrum import EigshResult

    before = mpl.get_backend()
    mpl.use("svg")  # a non-interactive backend other than the Agg a library might force
    try:
        res = EigshResult(values=torch.tensor([2.0, 1.0]), vectors=torch.eye(2), residuals=torch.zeros(2),
                          converged=torch.tensor([True, False]), num_matvecs=2)
        fig = plot_top_eigenvalues(res)
        assert mpl.get_backend() == "svg"
        import matplotlib.pyplot as plt

        plt.close(fig)
    finally:
        mpl.use(before)


def test_cli_help_lists_verbs(capsys):
    from hesse.cli.main import main

    assert main([]) == 2
    out = capsys.readouterr().out
    assert "demo" in out


def test_public_records_derive_from_result():
    """Every public record is a Result: fields, mapping access, as_dict() and the aligned repr."""
    import dataclasses

    import torch

    from hesse._result import Result
    from hesse.optimize.result import OptimizeHistory
    from hesse.spectrum.per_layer import LayerSpectrumRow, PerLayerSpectrum

    for cls in (hesse.HessianCheck,
                OptimizeHistory, LayerSpectrumRow, PerLayerSpectrum):
        assert issubclass(cls, Result) and dataclasses.is_dataclass(cls), cls
    history = OptimizeHistory(values=[3.0, 1.0], grad_norms=[2.0, 0.5])
    assert history["values"] == [3.0, 1.0] and history.as_dict()["grad_norms"] == [2.0, 0.5]
    check = hesse.check_hessian(lambda x: (x**3).sum(), torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert check.as_dict()["passed"] is True and "max_rel_error" in check.keys()
