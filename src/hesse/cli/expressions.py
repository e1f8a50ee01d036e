"""Safe mathematical expressions from untrusted text: parsed, never evaluated as Python.

``parse_expression("x**4 + y**4 - 2*x**2 - 2*y**2 + 1")`` reads the text with :func:`ast.parse`
(which only builds a syntax tree, it runs nothing) and walks the tree against a whitelist:
numbers, variable names, ``+ - * / **``, unary minus/plus, parentheses, the functions
``sin cos tan exp log sqrt tanh sinh cosh abs atan asin acos`` (one argument each) and the
constants ``pi`` and ``e``. Names of non-finite numbers (``nan``, ``inf``, ``oo``, ``zoo``, any
case) are refused, never taken as variables. Everything else — attribute access, indexing, other calls, keywords,
dunder names, lambda, strings, comprehensions, comparisons — is refused with an
:class:`ExpressionError` that says what was found and what is allowed, before anything is
evaluated. Sizes are bounded too: the text (2,000 characters), the tree (1,000 nodes, depth 60; a chain
of ``+ -`` or ``* /`` counts as one level, whatever its length),
constant exponents (|p| <= 1,000) and every constant sub-expression (it must fit in a float64;
``9**9**9**9`` is refused). The torch function and the sympy expression are both built from the
checked tree by our own walk (``sympy.sympify`` is never called on user text: it evaluates
strings).
"""

from __future__ import annotations

import ast
import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from hesse.cli._errors import CLIError

__all__ = ["Expression", "ExpressionError", "parse_bounds", "parse_expression", "parse_point"]

MAX_LENGTH = 2000
MAX_NODES = 1000
MAX_DEPTH = 60
MAX_EXPONENT = 1000.0

_FUNCTIONS: dict[str, tuple[Callable, Callable, str]] = {
    # name: (torch function, math function for constant folding, sympy attribute)
    "sin": (torch.sin, math.sin, "sin"),
    "cos": (torch.cos, math.cos, "cos"),
    "tan": (torch.tan, math.tan, "tan"),
    "exp": (torch.exp, math.exp, "exp"),
    "log": (torch.log, math.log, "log"),
    "sqrt": (torch.sqrt, math.sqrt, "sqrt"),
    "tanh": (torch.tanh, math.tanh, "tanh"),
    "sinh": (torch.sinh, math.sinh, "sinh"),
    "cosh": (torch.cosh, math.cosh, "cosh"),
    "abs": (torch.abs, abs, "Abs"),
    "atan": (torch.atan, math.atan, "atan"),
    "asin": (torch.asin, math.asin, "asin"),
    "acos": (torch.acos, math.acos, "acos"),
}
_CONSTANTS = {"pi": math.pi, "e": math.e}
# names that mean a non-finite number in Python, numpy, torch or sympy: refused, never variables
# (``x + nan`` must not become a function of a variable called nan)
_NON_FINITE = frozenset({"nan", "inf", "infinity", "oo", "zoo"})
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_ALLOWED = ("numbers, variable names, + - * / **, parentheses, the functions "
            + ", ".join(sorted(_FUNCTIONS)) + " and the constants pi, e")


class ExpressionError(CLIError, ValueError):
    """The text is not an expression hesse accepts (a ``ValueError`` and a CLI user error)."""


@dataclass(frozen=True)
class Expression:
    """A checked expression: ``text``, ordered ``variables``, a torch ``function`` of ONE flat tensor
    ``x`` (``x[i]`` is ``variables[i]``) returning a scalar, and the exact ``sympy`` expression.

    ``function`` uses only torch operations, so it works under ``torch.func.grad``/``hessian``/
    ``vmap``. Calling the expression object itself is the same as calling ``function``.
    """

    text: str
    variables: tuple[str, ...]
    function: Callable[[torch.Tensor], torch.Tensor] = field(repr=False, compare=False)
    _tree: ast.AST = field(repr=False, compare=False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x)

    @property
    def sympy(self):
        """The sympy expression, built from the checked syntax tree (exact rationals for literals)."""
        import sympy

        symbols = {name: sympy.Symbol(name, real=True) for name in self.variables}
        return _to_sympy(self._tree, symbols, sympy)

    @property
    def sympy_symbols(self) -> tuple:
        import sympy

        return tuple(sympy.Symbol(name, real=True) for name in self.variables)

    def __repr__(self) -> str:
        return f"Expression({self.text!r}, variables={self.variables})"


def _fail(text: str, why: str) -> ExpressionError:
    return ExpressionError(f"cannot use expression {_short(text)}: {why}. Allowed: {_ALLOWED}.")


def _short(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _order_variables(names: set[str]) -> tuple[str, ...]:
    first = [v for v in ("x", "y", "z") if v in names]
    return tuple(first + sorted(names - set(first)))


def _constant_value(node: ast.AST, text: str) -> float | None:
    """Float value of a variable-free checked node, or None if it has variables; refuses overflow."""
    try:
        return _fold(node)
    except _HasVariable:
        return None
    except (OverflowError, ZeroDivisionError, ValueError) as err:
        raise _fail(text, f"a constant sub-expression cannot be evaluated in float64 ({err})") from None


class _HasVariable(Exception):
    pass


_CHAINS = ((ast.Add, ast.Sub), (ast.Mult, ast.Div))


def _chain(node: ast.BinOp) -> tuple[ast.AST, list[ast.BinOp]]:
    """A left-leaning chain ``a + b - c + ...`` (or of ``*``, ``/``) as its first operand and its
    operator nodes in evaluation order: a flat sum is a sequence, not nesting, and is walked,
    folded and compiled without recursing down the chain."""
    group = next((g for g in _CHAINS if isinstance(node.op, g)), None)
    spine = [node]
    if group is not None:
        while isinstance(spine[-1].left, ast.BinOp) and isinstance(spine[-1].left.op, group):
            spine.append(spine[-1].left)
    spine.reverse()
    return spine[0].left, spine


def _apply(op: ast.operator, a, b):
    if isinstance(op, ast.Add):
        return a + b
    if isinstance(op, ast.Sub):
        return a - b
    if isinstance(op, ast.Mult):
        return a * b
    return a / b


def _constant_number(node: ast.Constant) -> float:
    """The value of a constant admitted by :func:`_check` (an int or a float)."""
    value = node.value
    if not isinstance(value, (int, float)):
        raise TypeError(f"unexpected constant {value!r} in a checked expression")
    return float(value)


def _checked_call(node: ast.AST) -> tuple[str, ast.AST]:
    """Function name and argument of a call admitted by :func:`_check` (``name(arg)``)."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) == 1):
        raise TypeError(f"unexpected node {ast.dump(node)[:80]} in a checked expression")
    return node.func.id, node.args[0]


def _fold(node: ast.AST) -> float:
    if isinstance(node, ast.Constant):
        return _constant_number(node)
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise _HasVariable
    if isinstance(node, ast.UnaryOp):
        v = _fold(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, ast.Pow):
            a, b = _fold(node.left), _fold(node.right)
            if abs(b) > MAX_EXPONENT:
                raise OverflowError(f"exponent {b:g} exceeds {MAX_EXPONENT:g}")
            r = math.pow(a, b)
            if not math.isfinite(r):
                raise OverflowError("result is not a finite float64")
            return r
        first, spine = _chain(node)
        r = _fold(first)
        for link in spine:
            r = _apply(link.op, r, _fold(link.right))
            if not math.isfinite(r):
                raise OverflowError("result is not a finite float64")
        return r
    if isinstance(node, ast.Call):
        name, arg = _checked_call(node)
        r = _FUNCTIONS[name][1](_fold(arg))
        if not math.isfinite(r):
            raise OverflowError("result is not a finite float64")
        return float(r)
    raise _HasVariable  # pragma: no cover - checked trees hold nothing else


def _check(tree: ast.AST, text: str) -> set[str]:
    """Walk the tree against the whitelist; return the variable names. Evaluates nothing."""
    names: set[str] = set()
    count = 0

    def walk(node: ast.AST, depth: int) -> None:
        nonlocal count
        count += 1
        if count > MAX_NODES:
            raise _fail(text, f"more than {MAX_NODES} syntax nodes")
        if depth > MAX_DEPTH:
            raise _fail(text, f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise _fail(text, f"the literal {node.value!r} is not a real number")
            if isinstance(node.value, int) and node.value.bit_length() > 1000:
                raise _fail(text, "an integer literal is too large")
            if not math.isfinite(float(node.value)):
                raise _fail(text, "a number literal is not finite in float64")
            return
        if isinstance(node, ast.Name):
            if node.id.startswith("_") or "__" in node.id:
                raise _fail(text, f"the name {node.id!r} is refused (no underscore/dunder names)")
            if node.id in _FUNCTIONS:
                raise _fail(text, f"the function {node.id!r} must be called with one argument")
            if not _NAME.match(node.id):
                raise _fail(text, f"the name {node.id!r} is not a valid variable name")
            if node.id.lower() in _NON_FINITE:
                raise _fail(text, f"{node.id!r} is not finite; the function must be finite (write a "
                                  "number, or rename the variable)")
            if node.id not in _CONSTANTS:
                names.add(node.id)
            return
        if isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, (ast.USub, ast.UAdd)):
                raise _fail(text, f"the unary operator {type(node.op).__name__} is not allowed")
            walk(node.operand, depth + 1)
            return
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.BitXor):
                raise _fail(text, "'^' is not a power here; write x**2 for x squared")
            if not isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow)):
                raise _fail(text, f"the operator {type(node.op).__name__} is not allowed")
            if isinstance(node.op, ast.Pow):
                walk(node.left, depth + 1)
                walk(node.right, depth + 1)
                p = _constant_value(node.right, text)
                if p is not None and abs(p) > MAX_EXPONENT:
                    raise _fail(text, f"the exponent {p:g} exceeds the limit {MAX_EXPONENT:g}")
            else:  # a chain of + - (or * /) is one level, whatever its length
                first, spine = _chain(node)
                count += len(spine) - 1
                walk(first, depth + 1)
                for link in spine:
                    walk(link.right, depth + 1)
            _constant_value(node, text)  # every constant sub-expression must fit in a float64
            return
        if isinstance(node, ast.Call):
            func = node.func
            if not isinstance(func, ast.Name):
                raise _fail(text, "only calls of the whitelisted math functions by name are allowed")
            if func.id not in _FUNCTIONS:
                raise _fail(text, f"the function {func.id!r} is not allowed")
            if node.keywords or len(node.args) != 1 or isinstance(node.args[0], ast.Starred):
                raise _fail(text, f"{func.id}() takes exactly one positional argument")
            walk(node.args[0], depth + 1)
            _constant_value(node, text)
            return
        what = {
            ast.Attribute: "attribute access", ast.Subscript: "indexing", ast.Lambda: "lambda",
            ast.List: "a list", ast.Tuple: "a tuple", ast.Dict: "a dict", ast.Set: "a set",
            ast.ListComp: "a comprehension", ast.GeneratorExp: "a comprehension",
            ast.SetComp: "a comprehension", ast.DictComp: "a comprehension",
            ast.Compare: "a comparison", ast.BoolOp: "a boolean operator", ast.IfExp: "a conditional",
            ast.JoinedStr: "a string", ast.NamedExpr: "an assignment", ast.Await: "await",
            ast.Starred: "unpacking", ast.Slice: "a slice",
        }.get(type(node), type(node).__name__)
        raise _fail(text, f"{what} is not allowed")

    walk(tree, 0)
    return names


def parse_expression(text: str, variables: Sequence[str] | None = None) -> Expression:
    """Parse ``text`` into an :class:`Expression` without evaluating any Python.

    ``variables`` fixes the order (and set) of variables; by default x, y, z come first (those
    present), then the other names alphabetically. Raises :class:`ExpressionError` (a
    ``ValueError``) naming what was refused.
    """
    if not isinstance(text, str):
        raise ExpressionError(f"the expression must be a string, got {type(text).__name__}.")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(
            f"the expression is {len(text)} characters long; the limit is {MAX_LENGTH}. "
            "Simplify it or define the function in Python.")
    if not text.strip():
        raise ExpressionError("the expression is empty; give e.g. 'x**2 + y**2'.")
    try:
        with warnings.catch_warnings():  # "invalid decimal literal" and the like: refused or fine
            warnings.simplefilter("ignore", SyntaxWarning)
            module = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise ExpressionError(f"cannot parse expression {_short(text)}: {err.msg}. "
                              "Write it in Python syntax, e.g. '3*x**2 + 2*x*y'.") from None
    except (ValueError, RecursionError, MemoryError):
        raise ExpressionError(f"cannot parse expression {_short(text)}: it is malformed or too deeply "
                              "nested.") from None
    tree = module.body
    found = _check(tree, text)
    if variables is None:
        order = _order_variables(found)
    else:
        order = tuple(variables)
        for v in order:
            if (not isinstance(v, str) or not _NAME.match(v) or v in _FUNCTIONS or v in _CONSTANTS
                    or v.lower() in _NON_FINITE):
                raise ExpressionError(f"variables: {v!r} is not a usable variable name.")
        if len(set(order)) != len(order):
            raise ExpressionError(f"variables: names repeat in {order}.")
        extra = sorted(found - set(order))
        if extra:
            raise ExpressionError(
                f"the expression {_short(text)} uses {', '.join(extra)}, which is not among the "
                f"variables {', '.join(order)}; add it to the variables.")
    if not order:
        raise ExpressionError(f"the expression {_short(text)} has no variables; nothing to differentiate.")
    index = {name: i for i, name in enumerate(order)}
    compiled = _compile(tree, index)
    n = len(order)

    def function(x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.shape != (n,):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"this expression takes one flat tensor of length {n} "
                             f"({', '.join(order)}); got {shape}.")
        out = compiled(x)
        if not isinstance(out, torch.Tensor):
            out = x.sum() * 0 + out
        return out

    return Expression(text=text.strip(), variables=order, function=function, _tree=tree)


def _compile(node: ast.AST, index: dict[str, int]) -> Callable:
    """Closure tree evaluating a checked node on a flat tensor (torch operations only)."""
    if isinstance(node, ast.Constant):
        value = _constant_number(node)
        return lambda x: value
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            value = _CONSTANTS[node.id]
            return lambda x: value
        i = index[node.id]
        return lambda x: x[i]
    if isinstance(node, ast.UnaryOp):
        inner = _compile(node.operand, index)
        if isinstance(node.op, ast.USub):
            return lambda x: -inner(x)
        return inner
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, ast.Pow):
            return _compile_pow(_compile(node.left, index), _compile(node.right, index), node.right)
        first, spine = _chain(node)
        head = _compile(first, index)
        links = [(link.op, _compile(link.right, index)) for link in spine]

        def chain(x):
            out = head(x)
            for op, term in links:
                out = _apply(op, out, term(x))
            return out

        return chain
    name, arg_node = _checked_call(node)
    fn = _FUNCTIONS[name][0]
    arg = _compile(arg_node, index)
    return lambda x: fn(_as_tensor(arg(x), x))


def _compile_pow(a: Callable, b: Callable, right: ast.AST) -> Callable:
    try:
        p = _fold(right)
    except _HasVariable:
        return lambda x: torch.pow(_as_tensor(a(x), x), b(x))
    if float(p).is_integer():
        k = int(p)
        # integer powers by repeated products: exact derivatives at 0 (no log in the chain rule)
        return lambda x: _int_pow(a(x), k)
    return lambda x: _as_tensor(a(x), x) ** p


def _as_tensor(v, x: torch.Tensor) -> torch.Tensor:
    return v if isinstance(v, torch.Tensor) else torch.as_tensor(v, dtype=x.dtype)


def _int_pow(v, k: int):
    if not isinstance(v, torch.Tensor):
        return float(v) ** k
    if k == 0:
        return v * 0 + 1
    # v ** k for k < 0 too: as 1 / v**|k| the chain rule divides by (v**|k|)², which overflows
    # (x**-1000 at x = 1.5 would get a zero gradient instead of -1000·x**-1001 ≈ -2.6e-182)
    return v ** k


def _to_sympy(node: ast.AST, symbols: dict, sympy):
    if isinstance(node, ast.Constant):
        if isinstance(node.value, int):
            return sympy.Integer(node.value)
        return sympy.Rational(repr(node.value))
    if isinstance(node, ast.Name):
        if node.id == "pi":
            return sympy.pi
        if node.id == "e":
            return sympy.E
        return symbols[node.id]
    if isinstance(node, ast.UnaryOp):
        inner = _to_sympy(node.operand, symbols, sympy)
        return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, ast.Pow):
            return _to_sympy(node.left, symbols, sympy) ** _to_sympy(node.right, symbols, sympy)
        first, spine = _chain(node)
        out = _to_sympy(first, symbols, sympy)
        for link in spine:
            out = _apply(link.op, out, _to_sympy(link.right, symbols, sympy))
        return out
    name, arg_node = _checked_call(node)
    return getattr(sympy, _FUNCTIONS[name][2])(_to_sympy(arg_node, symbols, sympy))


def parse_point(text: str, variables: Sequence[str]) -> torch.Tensor:
    """``"x=0,y=1"`` (any order, all variables) or ``"0,1"`` (in variable order) -> float64 tensor."""
    variables = tuple(variables)
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise ExpressionError(f"--at: empty point; give e.g. {_example_point(variables)}.")
    values: dict[str, float] = {}
    if all("=" in p for p in parts):
        for p in parts:
            name, _, val = p.partition("=")
            name = name.strip()
            if name not in variables:
                raise ExpressionError(f"--at: {name!r} is not a variable of the expression "
                                      f"({', '.join(variables)}).")
            if name in values:
                raise ExpressionError(f"--at: {name} is given twice.")
            values[name] = _number(val, f"--at {name}")
        missing = [v for v in variables if v not in values]
        if missing:
            raise ExpressionError(f"--at: no value for {', '.join(missing)}; give e.g. "
                                  f"{_example_point(variables)}.")
        return torch.tensor([values[v] for v in variables], dtype=torch.float64)
    if any("=" in p for p in parts):
        raise ExpressionError("--at: mix of 'name=value' and bare values; use one form.")
    if len(parts) != len(variables):
        raise ExpressionError(f"--at: {len(parts)} values for {len(variables)} variables "
                              f"({', '.join(variables)}); give e.g. {_example_point(variables)}.")
    return torch.tensor([_number(p, "--at") for p in parts], dtype=torch.float64)


def _example_point(variables: Sequence[str]) -> str:
    return ",".join(f"{v}=0" for v in variables)


def _number(text: str, what: str) -> float:
    try:
        v = float(text.strip())
    except ValueError:
        raise ExpressionError(f"{what}: {text.strip()!r} is not a number.") from None
    if not math.isfinite(v):
        raise ExpressionError(f"{what}: {text.strip()!r} is not finite.")
    return v


def parse_bounds(text: str, n: int) -> list[tuple[float, float]]:
    """``"-2:2,-1:3"`` -> ``[(-2, 2), (-1, 3)]``; a single ``"lo:hi"`` is used for all ``n`` coordinates."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if len(parts) == 1 and n > 1:
        parts = parts * n
    if len(parts) != n:
        raise ExpressionError(f"--bounds: {len(parts)} intervals for {n} variables; give one "
                              f"'low:high' per variable, e.g. {','.join(['-2:2'] * n)}.")
    out = []
    for i, p in enumerate(parts):
        lo, sep, hi = p.partition(":")
        if not sep:
            raise ExpressionError(f"--bounds: {p!r} is not 'low:high' (e.g. -2:2).")
        a, b = _number(lo, f"--bounds[{i}] low"), _number(hi, f"--bounds[{i}] high")
        if not a < b:
            raise ExpressionError(f"--bounds: interval {p!r} is empty; need low < high.")
        out.append((a, b))
    return out
