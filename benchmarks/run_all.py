"""Run every ``benchmarks/bench_*.py`` and print one combined table.

    python benchmarks/run_all.py            # quick settings where a script has --quick
    python benchmarks/run_all.py --full     # the settings of the published tables (slow)
    python benchmarks/run_all.py --only core spectrum

Each script runs in its own process (so one's memory and threads do not affect the next), its
output is shown as it runs, and the table at the end gives each script's exit status, wall time
and the lines of its own result table. Exit status: 0 when every script succeeded.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def scripts(only: list[str] | None = None) -> list[Path]:
    found = sorted(HERE.glob("bench_*.py"))
    if only:
        wanted = {f"bench_{name}.py" if not name.startswith("bench_") else name for name in only}
        missing = wanted - {p.name for p in found}
        if missing:
            raise SystemExit(f"run_all: no such benchmark: {', '.join(sorted(missing))} "
                             f"(have: {', '.join(p.stem[6:] for p in found)})")
        found = [p for p in found if p.name in wanted]
    return found


def has_quick(path: Path) -> bool:
    """Whether the script declares a ``--quick`` option (not every one does)."""
    return '"--quick"' in path.read_text()


def table_lines(output: str) -> list[str]:
    """The markdown table rows a script printed (its result table)."""
    return [line for line in output.splitlines() if line.startswith("|")]


def run(path: Path, quick: bool, timeout: float) -> dict:
    argv = [sys.executable, str(path)] + (["--quick"] if quick and has_quick(path) else [])
    print(f"\n=== {path.name} {' '.join(argv[2:])}", flush=True)
    start = time.perf_counter()
    lines: list[str] = []
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=HERE.parent)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            lines.append(line)
        status = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        status = "timeout"
    return {"script": path.name, "args": " ".join(argv[2:]), "status": status,
            "seconds": time.perf_counter() - start, "table": table_lines("".join(lines))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="no --quick: the published settings (slow)")
    parser.add_argument("--only", nargs="*", metavar="NAME", help="e.g. core spectrum (default: all)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per script (default 3600)")
    args = parser.parse_args(argv)
    results = [run(p, quick=not args.full, timeout=args.timeout) for p in scripts(args.only)]
    print("\n=== summary\n")
    print(f"| {'benchmark':<22} | {'args':<8} | {'status':<7} | {'seconds':>8} |")
    print(f"|{'-' * 24}|{'-' * 10}|{'-' * 9}|{'-' * 10}|")
    for r in results:
        status = "ok" if r["status"] == 0 else str(r["status"])
        print(f"| {r['script']:<22} | {r['args']:<8} | {status:<7} | {r['seconds']:>8.1f} |")
    for r in results:
        if r["table"]:
            print(f"\n{r['script']}:")
            print("\n".join(r["table"]))
    return 0 if all(r["status"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
