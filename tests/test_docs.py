"""Every code block in README.md and docs/*.md runs, and printed numbers match what the page shows.

Rules (also the rules for writing pages):

- ```` ```python ```` blocks of one page run in order in one namespace, fresh per page, with the
  working directory a temporary folder (files the examples write land there).
- A ```` ```text ```` block right after a python block is the expected output of that block: the
  printed text must match it, numbers to the digits shown (a shown ``2.763932`` accepts anything that
  rounds to it, plus one unit in the last digit for rounding on another platform; integers exactly),
  other text word
  for word (whitespace-insensitive). ``...`` in the expected text matches anything.
- ```` ```console ```` blocks: each line ``$ hesse ARGS`` runs ``hesse.cli.main.main(ARGS)`` in the
  same process and must exit 0; the lines after it, up to the next ``$``, are its expected output
  (compared as above). ``examples/`` in ARGS refers to the repository's folder.
- A block is skipped when its opening fence says ``title="no-run"`` or the line before it is
  ``<!-- no-run -->``. ```` ```bash ```` blocks (install, make, torchrun) are shown, never run.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_FENCE = re.compile(r"^```(\w+)?([^\n]*)\n(.*?)^```\s*$", re.M | re.S)
_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def matches(got: str, expected: str) -> bool:
    """``got`` matches ``expected`` as described in the module docstring.

    The expected text becomes a regular expression: ``...`` matches anything, runs of whitespace
    match any whitespace, each number matches any number; the numbers captured are then compared
    with the numbers shown, to the digits shown.
    """
    pattern, shown = [], []
    for piece in re.split(r"(\.\.\.|\s+|" + _NUMBER.pattern + ")", expected.strip()):
        if not piece:
            continue
        if piece == "...":
            pattern.append(r".*?")
        elif piece.isspace():
            pattern.append(r"\s+")
        elif _NUMBER.fullmatch(piece):
            pattern.append("(" + _NUMBER.pattern + ")")
            shown.append(piece)
        else:
            pattern.append(re.escape(piece))
    m = re.fullmatch("".join(pattern), got.strip(), re.S)
    return m is not None and all(_number_close(g, e) for g, e in zip(m.groups(), shown))


def _number_close(got: str, shown: str) -> bool:
    g, s = float(got), float(shown)
    if re.fullmatch(r"[-+]?\d+", shown):  # an integer shown is an integer checked: counts, sizes
        return g == s
    mantissa = shown.lower().split("e")[0]
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    exponent = int(shown.lower().split("e")[1]) if "e" in shown.lower() else 0
    unit = 10.0 ** (exponent - decimals)
    return abs(g - s) <= 1.0 * unit + 1e-12 * abs(s)


def page_blocks(path: Path) -> list[dict]:
    """The runnable units of a page: python blocks (with their expected output) and console lines."""
    text = path.read_text()
    found = list(_FENCE.finditer(text))
    units = []
    for i, m in enumerate(found):
        lang, info, body = m.group(1) or "", m.group(2), m.group(3)
        line_before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        skipped = 'title="no-run"' in info or line_before == "<!-- no-run -->"
        if lang == "python":
            expected = None
            if i + 1 < len(found):
                nxt = found[i + 1]
                if (nxt.group(1) or "") == "text" and not text[m.end():nxt.start()].strip():
                    expected = nxt.group(3)
            units.append({"kind": "python", "code": body, "expected": expected, "skipped": skipped,
                          "line": text[:m.start()].count("\n") + 1})
        elif lang == "console":
            cmds = []
            for chunk in re.split(r"^\$ ", body, flags=re.M)[1:]:
                cmd, _, out = chunk.partition("\n")
                cmds.append((cmd.strip(), out))
            units.append({"kind": "console", "commands": cmds, "skipped": skipped,
                          "line": text[:m.start()].count("\n") + 1})
    return units


def _run_console(cmd: str, expected: str) -> None:
    from hesse.cli.main import main

    argv = shlex.split(cmd)
    assert argv[0] == "hesse", f"console blocks run hesse commands only, got {cmd!r}"
    argv = [a.replace("examples/", str(ROOT / "examples") + "/") for a in argv[1:]]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    assert rc == 0, f"{cmd!r} exited {rc}"
    if expected.strip():
        assert matches(buf.getvalue(), expected), f"{cmd!r} printed\n{buf.getvalue()}\nexpected\n{expected}"


CODE_PAGES = [p for p in PAGES if any(not u["skipped"] for u in page_blocks(p))]


def _run_page(page: Path, threads: int) -> None:
    """Run one page's blocks in order; compare printed output with the page's output blocks."""
    units = [u for u in page_blocks(page) if not u["skipped"]]
    import matplotlib

    matplotlib.use("Agg")
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    namespace: dict = {"__name__": "__docs__"}
    try:
        for unit in units:
            where = f"{page.name}:{unit['line']}"
            if unit["kind"] == "python":
                buf = io.StringIO()
                with contextlib.redirect_stdout(buf):
                    exec(compile(unit["code"], where, "exec"), namespace)  # noqa: S102
                if unit["expected"] is not None:
                    assert matches(buf.getvalue(), unit["expected"]), (
                        f"{where} printed\n{buf.getvalue()}\nbut the page shows\n{unit['expected']}")
            else:
                for cmd, expected in unit["commands"]:
                    _run_console(cmd, expected)
    finally:
        torch.set_num_threads(before)
        import matplotlib.pyplot as plt

        plt.close("all")


@pytest.mark.parametrize("page", CODE_PAGES, ids=[str(p.relative_to(ROOT)) for p in CODE_PAGES])
def test_page_code_runs(page: Path, tmp_path, monkeypatch):
    """Run one page's blocks in order (one thread); compare printed output with the page's."""
    monkeypatch.chdir(tmp_path)
    _run_page(page, threads=1)


def _perturbed_digits(original):
    """``digits_data`` with a fixed random half of the nonzero pixels moved by float32's machine
    epsilon (relative): what another CPU's float32 kernels do to the same computation."""
    import torch

    def digits_data(*args, **kwargs):
        X, y = original(*args, **kwargs)
        gen = torch.Generator().manual_seed(12345)
        flip = torch.rand(X.shape, generator=gen) < 0.5
        step = X * torch.finfo(torch.float32).eps
        return torch.where(flip, X + step, X - step), y

    return digits_data


@pytest.mark.parametrize("page", CODE_PAGES, ids=[str(p.relative_to(ROOT)) for p in CODE_PAGES])
def test_page_numbers_do_not_depend_on_roundoff(page: Path, tmp_path, monkeypatch):
    """Every number a page prints is what any user gets on any CPU: with the built-in data moved at
    float32 roundoff, each page still prints the digits it shows. A page whose numbers fail here prints digits that depend on the last
    bits of float32 arithmetic: make its example better conditioned or print fewer digits."""
    import hesse.demo_models

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hesse.demo_models, "digits_data", _perturbed_digits(hesse.demo_models.digits_data))
    _run_page(page, threads=1)


@pytest.mark.parametrize("got, expected, ok", [
    ("2.7639320225", "2.763932", True),
    ("2.7639", "2.763932", False),          # fewer digits than shown: not a match
    ("2.763933", "2.763932", True),         # one unit in the last digit
    ("2.763935", "2.763932", False),
    ("True 21 tensor([1., 1.]) quadratic", "True 21 tensor([1., 1.]) quadratic", True),
    ("True 22 tensor([1., 1.]) quadratic", "True 21 tensor([1., 1.]) quadratic", False),
    ("a 1.5e-07 b", "a 1.5e-07 b", True),
    ("a 1.7e-07 b", "a 1.5e-07 b", False),
    ("head 3 lines tail", "head ... tail", True),
    ("head 3 lines", "head ... tail", False),
    ("model: /abs/path/examples/m.py:make  n: 3466", "model: ...m.py:make n: 3466", True),
    ("f(x) = 6.0 at [1.5, 2]", "f(x) = 6.0 at [1.5, 3]", False),
])
def test_output_matching(got, expected, ok):
    """The comparison itself: digits shown are digits checked."""
    assert matches(got, expected) is ok


def test_docs_have_code():
    """The test looks where the code is: the pages exist and hold runnable blocks."""
    units = [u for p in PAGES for u in page_blocks(p) if not u["skipped"]]
    assert len(PAGES) > 10 and len(units) > 20


def test_cli_reference_renders_every_subcommand():
    """The hook that writes the CLI page takes every verb from the parser, with its options."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs_hooks" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    text = hooks.on_page_markdown("<!-- cli-reference -->", None, None, None)
    from hesse.cli.main import VERBS

    for verb in VERBS:
        assert f"## hesse {verb}\n" in text and f"usage: hesse {verb}" in text
    assert "--model FILE.py:FACTORY" in text and "--x0" in text


@pytest.mark.parametrize("package", ["operators", "spectrum", "geometry", "optimize", "optim", "laplace",
                                     "influence",
                                     "diagnostics", "distributed", "plot", "testing"])
def test_api_page_lists_every_public_name(package):
    """Each subpackage has a reference page; a public name that shares its name with a submodule
    (``hesse.spectrum.trace`` is a function and a module), and a module-level constant, are not
    picked up from the package and need their own ``:::`` directive."""
    import importlib
    import importlib.util

    module = importlib.import_module(f"hesse.{package}")
    page = (ROOT / "docs" / "reference" / f"{package}.md").read_text()
    assert f"::: hesse.{package}\n" in page
    for name in module.__all__:
        shadowed = importlib.util.find_spec(f"hesse.{package}.{name}") is not None
        constant = name.isupper() and not isinstance(getattr(module, name), type)  # e.g. KINDS
        if shadowed or constant:
            assert re.search(rf"^::: hesse\.{package}\.[\w.]*\b{name}$", page, re.M), (
                f"docs/reference/{package}.md needs '::: hesse.{package}.<module>.{name}'")
