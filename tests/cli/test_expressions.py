"""The safe expression parser: accepts mathematics, refuses everything else before evaluating."""

import pytest
import sympy
import torch

from hesse.cli.expressions import ExpressionError, parse_bounds, parse_expression, parse_point
from hesse.cli.main import main

MALICIOUS = [
    "__import__('os').system('touch {s}')",
    "().__class__",
    "x.__class__",
    "lambda: 0",
    "[x][0]",
    "'a'",
    "9**9**9**9",
    "x" + " + x" * 1200,
    "open('{s}', 'w')",
    "(1).__class__.__bases__[0].__subclasses__()",
    "exec('open(\"{s}\",\"w\")')",
    "sin(x, y)",
    "sin(x=1)",
    "[c for c in ()]",
    "x if y else 0",
    "x < y",
    "x @ y",
    "(10**300)**2",
    "_x + 1",
    "f\"{{x}}\"",
    "sin(" * 100 + "x" + ")" * 100,
    "-" * 300 + "x",
]


@pytest.mark.parametrize("template", MALICIOUS)
def test_refused_before_anything_runs(template, tmp_path, capsys):
    sentinel = tmp_path / "sentinel"
    text = template.format(s=sentinel)
    with pytest.raises(ExpressionError):
        parse_expression(text)
    assert main(["analyze", "--quiet", "--", text]) == 2  # CLI: one-line error, exit status 2
    err = capsys.readouterr().err
    assert "hesse analyze: error:" in err and len(err.strip().splitlines()) == 1
    assert not sentinel.exists()


def test_error_messages_name_the_problem():
    with pytest.raises(ExpressionError, match="attribute access"):
        parse_expression("x.real")
    with pytest.raises(ExpressionError, match="exponent"):
        parse_expression("x**5000")
    with pytest.raises(ExpressionError, match="characters long"):
        parse_expression("x+" * 1500 + "x")
    with pytest.raises(ExpressionError, match=r"write x\*\*2"):
        parse_expression("x^2")
    with pytest.raises(ExpressionError, match="not allowed"):
        parse_expression("eval(x)")
    assert isinstance(ExpressionError("m"), ValueError)


def test_values_gradients_and_sympy_agree():
    e = parse_expression("x**2*y + sin(x*y) + exp(z)/2 - sqrt(abs(y)+1) + pi*tanh(x) - e")
    assert e.variables == ("x", "y", "z")
    p = torch.tensor([0.3, -0.7, 0.2], dtype=torch.float64)
    x, y, z = e.sympy_symbols
    exact = float(e.sympy.subs({x: 0.3, y: -0.7, z: 0.2}).evalf(30))
    assert float(e.function(p)) == pytest.approx(exact, rel=1e-14)
    g = torch.func.grad(e.function)(p)
    gs = [float(sympy.diff(e.sympy, s).subs({x: 0.3, y: -0.7, z: 0.2}).evalf(30)) for s in (x, y, z)]
    torch.testing.assert_close(g, torch.tensor(gs, dtype=torch.float64), rtol=1e-13, atol=1e-14)
    H = torch.func.vmap(torch.func.hessian(e.function))(torch.stack([p, p]))  # works under vmap
    assert H.shape == (2, 3, 3)


def test_variable_order_and_exact_literals():
    assert parse_expression("b*a + y + x").variables == ("x", "y", "a", "b")
    assert parse_expression("x + y", variables=["y", "x"]).variables == ("y", "x")
    assert parse_expression("0.1*x").sympy == sympy.Rational(1, 10) * sympy.Symbol("x", real=True)
    with pytest.raises(ExpressionError, match="not among the variables"):
        parse_expression("x + q", variables=["x"])
    with pytest.raises(ExpressionError, match="no variables"):
        parse_expression("1 + 2")
    c = parse_expression("x*0 + 5")
    assert float(c.function(torch.tensor([1.0], dtype=torch.float64))) == 5.0


def test_parse_point_and_bounds():
    v = ("x", "y")
    torch.testing.assert_close(parse_point("y=1, x=0", v), torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(parse_point("0.5,-2", v), torch.tensor([0.5, -2.0], dtype=torch.float64))
    assert parse_bounds("-2:2,-1:3", 2) == [(-2.0, 2.0), (-1.0, 3.0)]
    assert parse_bounds("-1:1", 3) == [(-1.0, 1.0)] * 3
    for bad, fn in [("x=0", lambda t: parse_point(t, v)), ("1,2,3", lambda t: parse_point(t, v)),
                    ("x=a,y=1", lambda t: parse_point(t, v)), ("2:-2", lambda t: parse_bounds(t, 1)),
                    ("-2:2,0:1,0:1", lambda t: parse_bounds(t, 2)), ("1", lambda t: parse_bounds(t, 1))]:
        with pytest.raises(ExpressionError):
            fn(bad)


@pytest.mark.parametrize("name", ["nan", "inf", "NaN", "Inf", "oo", "zoo", "infinity", "NAN"])
def test_non_finite_names_are_refused_not_variables(name):
    with pytest.raises(ExpressionError, match="not finite"):
        parse_expression(f"x + {name}")
    with pytest.raises(ExpressionError):
        parse_expression("x + y", variables=["x", name])


@pytest.mark.parametrize("x0", [1.05, 1.5, 2.0])
def test_large_negative_power_derivatives_do_not_underflow(x0):
    # closed forms: d/dx x**-1000 = -1000 x**-1001, d²/dx² = 1000·1001 x**-1002, representable in
    # float64 for these x (as 1/x**1000 they came out 0 at 1.5 and 2); rel 1e-12: a few roundings
    from torch.func import grad, hessian

    f = parse_expression("x**-1000")
    x = torch.tensor([x0], dtype=torch.float64)
    assert float(grad(f.function)(x)[0]) == pytest.approx(-1000 * x0 ** -1001, rel=1e-12, abs=0)
    assert float(hessian(f.function)(x)[0, 0]) == pytest.approx(1000 * 1001 * x0 ** -1002, rel=1e-12, abs=0)


@pytest.mark.parametrize("op", ["+", "-", "*"])
@pytest.mark.parametrize("terms", [61, 200])
def test_a_flat_chain_is_not_nesting(op, terms):
    """A sum of 61 terms was refused as "nested deeper than 60 levels"."""
    names = [f"x{i}" for i in range(terms)]
    text = f" {op} ".join(f"{n}**2" for n in names)
    expr = parse_expression(text, names)
    x = torch.linspace(0.5, 1.5, terms, dtype=torch.float64)
    sq = x**2
    expected = {"+": sq.sum(), "-": sq[0] - sq[1:].sum(), "*": sq.prod()}[op]
    assert torch.allclose(expr.function(x), expected, rtol=1e-12)
    # the gradient runs through the chain without recursing down it
    g = torch.func.grad(expr.function)(x)
    ref = torch.autograd.functional.jacobian(lambda v: {"+": (v**2).sum(), "-": v[0]**2 - (v[1:]**2).sum(),
                                                         "*": (v**2).prod()}[op], x)
    assert torch.allclose(g, ref, rtol=1e-10)
    assert len(expr.sympy.free_symbols) == terms


def test_deep_nesting_is_still_refused():
    text = "(x + " * 70 + "1" + ")" * 70  # x + (x + (x + ...)): each sum inside the next
    with pytest.raises(ExpressionError, match="nested deeper"):
        parse_expression(text)
