"""MkDocs hooks: pages generated from the code at build time, so nothing is written twice.

- ``<!-- cli-reference -->`` in a page becomes the ``--help`` text of ``hesse`` and of each of its
  subcommands, taken from the argparse parser that ``hesse.cli.main`` builds.
- Sphinx roles left in docstrings (``:func:`x` ``) are shown as plain code in the API pages.
- ``<!-- source: PATH -->`` becomes the contents of the file PATH (relative to the repository
  root) in a code block, so an example page shows the script the tests run.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_SOURCE = re.compile(r"<!-- source: (\S+) -->")
_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj):(?=<code)")


def _cli_reference() -> str:
    sys.path.insert(0, str(ROOT / "src"))
    os.environ["COLUMNS"] = "84"  # argparse wraps help text to the terminal width
    from hesse.cli.main import build_parser

    parser = build_parser()
    parts = ["## hesse", "", "```text", parser.format_help().rstrip(), "```", ""]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, verb_parser in sub.choices.items():
        parts += [f"## hesse {name}", "", "```text", verb_parser.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def _source(match: re.Match) -> str:
    path = ROOT / match.group(1)
    lang = "python" if path.suffix == ".py" else "text"
    return f'```{lang} title="{match.group(1)}"\n{path.read_text().rstrip()}\n```'


def on_page_markdown(markdown: str, page, config, files) -> str:
    if "<!-- cli-reference -->" in markdown:
        markdown = markdown.replace("<!-- cli-reference -->", _cli_reference())
    return _SOURCE.sub(_source, markdown)


def on_page_content(html: str, page, config, files) -> str:
    return _ROLE.sub("", html)
