"""`make bench`: run every bench/bench_*.py (or the names given) and write bench/results/<name>.md.

Benchmarks measure; tests never assert timings. Each module exposes ``main() -> str`` returning
a Markdown fragment with its figures and the conditions they were taken under.
"""

from __future__ import annotations

import importlib
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine() -> str:
    import os

    return (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}")


def main(argv: list[str] | None = None) -> int:
    names = argv if argv is not None else sys.argv[1:]
    modules = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if names:
        unknown = [n for n in names if f"bench_{n}" not in modules and n not in modules]
        if unknown:
            print(f"error: unknown benchmark {', '.join(unknown)}; have {', '.join(modules)}", file=sys.stderr)
            return 3
        modules = [m for m in modules if m in names or m.removeprefix("bench_") in names]
    (HERE / "results").mkdir(exist_ok=True)
    failed = 0
    for name in modules:
        print(f"== {name}", flush=True)
        started = time.monotonic()
        try:
            text = importlib.import_module(f"bench.{name}").main()
        except Exception as exc:  # one broken benchmark must not hide the others
            failed += 1
            print(f"{name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        out = f"# {name}\n\nMachine: {machine()}; took {time.monotonic() - started:.0f} s.\n\n{text.strip()}\n"
        (HERE / "results" / f"{name}.md").write_text(out)
        print(out, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
