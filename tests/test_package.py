"""The package's shape: public API exported, layers importing only downwards, CLI entry point."""

from __future__ import annotations

import ast
from pathlib import Path

import hesse

SRC = Path(hesse.__file__).resolve().parent

# what each layer may import from hesse (STYLE.md: arrows point down)
LAYER = {
    "_autodiff": 0, "_validation": 0, "_memory": 0, "_progress": 0, "_result": 0, "_linalg": 0,
    "_blocks": 0,
    "distributed": 1, "operators": 2,
    "spectrum": 3, "geometry": 3, "optimize": 3, "optim": 3,
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


def test_public_api_is_exported():
    for name in hesse.__all__:
        assert hasattr(hesse, name), name
    for name in ("gradient", "hessian", "hvp", "jacobian", "check_hessian", "HessianOperator",
                 "GGNOperator", "FisherOperator", "DenseOperator", "CurvatureOperator"):
        assert name in hesse.__all__
    assert len(set(hesse.__all__)) == len(hesse.__all__)


def test_cli_help_lists_verbs(capsys):
    from hesse.cli.main import main

    assert main([]) == 2
    out = capsys.readouterr().out
    assert "demo" in out
