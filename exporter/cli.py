"""`trading-readiness` command line. Exit codes follow the Nagios convention everywhere:
0 READY, 1 DEGRADED, 2 BLOCKED, 3 UNKNOWN (bad usage, bad config, could not evaluate)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from . import __version__
from .botenv import Redactor, secret_values, url_credentials
from .catalog import CatalogError
from .catalog import load as load_catalog
from .config import Config, ConfigError
from .config import load as load_config

EXIT_UNKNOWN = 3


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit 3 (argparse would exit 2 = BLOCKED)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="trading-readiness", description="Is the trading bot able to trade, right now, and why not?")
    p.add_argument("--config", metavar="FILE", help="config file (default: $TRADING_READINESS_CONFIG, "
                                                     "else <bot root>/trading-readiness.yaml, else built-in)")
    p.add_argument("--bot-root", metavar="DIR", help="the bot's working directory (default: "
                                                       "$TRADING_READINESS_BOT_ROOT or the current directory)")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    c = sub.add_parser("check", help="run every enabled check once and exit by readiness")
    c.add_argument("--json", action="store_true", help="print the JSON result")
    c.add_argument("--only", nargs="+", metavar="FP", help="run only these failure points (e.g. FP-1.3)")

    pr = sub.add_parser("probe", help="trace a synthetic signal through the decision path (never orders)")
    pr.add_argument("--json", action="store_true")

    v = sub.add_parser("verify", help="config + all checks + probe + rule validation; writes the result record")
    v.add_argument("--json", action="store_true")

    s = sub.add_parser("serve", help="run the Prometheus exporter and status page")
    s.add_argument("--listen", metavar="HOST:PORT")

    h = sub.add_parser("heal", help="run the Alertmanager webhook receiver that runs healers")
    h.add_argument("--listen", metavar="HOST:PORT")
    h.add_argument("--insecure-no-auth", action="store_true", help="accept webhooks without a bearer token")
    h.add_argument("--dry-run", action="store_true", help="log what would run, run nothing")

    cat = sub.add_parser("catalog", help="print the failure-point catalog")
    g = cat.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true")
    g.add_argument("--markdown", action="store_true")

    sb = sub.add_parser("sandbox", help="run a simulated bot environment on loopback")
    sb.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.bot_root)


def cmd_check(args: argparse.Namespace) -> int:
    from .context import Context
    from .engine import Engine
    from .render import table

    cfg = _config(args)
    engine = Engine(Context(cfg))
    if args.only:
        unknown = [fp for fp in args.only if fp not in cfg.catalog.points]
        if unknown:
            raise UsageError(f"unknown failure point {', '.join(unknown)} in --only")
        planned = [fp for fp in args.only if cfg.catalog[fp].detection != "implemented"]
        if planned:
            raise UsageError(f"no detection implemented yet for {', '.join(planned)}")
    report = engine.report(args.only)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(table(report))
    return report.readiness.exit_code


def cmd_catalog(args: argparse.Namespace) -> int:
    from .render import catalog_markdown

    cat = load_catalog()
    if args.markdown:
        sys.stdout.write(catalog_markdown(cat))
    elif args.json:
        print(json.dumps(catalog_json(cat), indent=2))
    else:
        for p in cat:
            print(f"{p.id:<7} {p.severity:<8} {p.detection:<11} {p.name}")
        print(f"\n{len(cat)} failure points, "
              f"{sum(1 for p in cat if p.detection == 'implemented')} with detection")
    return 0


def catalog_json(cat: Any) -> dict[str, Any]:
    return {
        "count": len(cat),
        "failure_points": [
            {"id": p.id, "name": p.name, "original_name": p.original_name, "category": p.category,
             "severity": p.severity, "detection": p.detection, "source": p.source, "detects": p.detects,
             "how": p.how, "levels": p.levels, "depends_on": list(p.depends_on), "healer": p.healer,
             "no_healer_reason": p.no_healer_reason, "runbook": p.runbook, "params": p.params,
             "interval_seconds": p.interval_seconds, "timeout_seconds": p.timeout_seconds,
             "market_hours": p.market_hours, "observations": list(p.observations)}
            for p in cat
        ],
    }


def _delegate(module: str, func: str, args: argparse.Namespace) -> int:
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            raise UsageError(f"'{args.command}' is not available in this build") from None
        raise
    return int(getattr(mod, func)(args))


COMMANDS = {
    "check": cmd_check,
    "catalog": cmd_catalog,
    "probe": lambda a: _delegate("exporter.probe", "cli_probe", a),
    "verify": lambda a: _delegate("exporter.verify", "cli_verify", a),
    "serve": lambda a: _delegate("exporter.server", "cli_serve", a),
    "heal": lambda a: _delegate("healers.receiver", "cli_heal", a),
    "sandbox": lambda a: _delegate("exporter.sim.sandbox", "cli_sandbox", a),
}


def _split_sandbox(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """argparse's REMAINDER does not capture a leading ``--option``, so everything after the
    ``sandbox`` command word is handed to the sandbox's own parser untouched."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--config", "--bot-root"):
            i += 2
            continue
        if a.startswith("-"):
            i += 1
            continue
        return (argv[: i + 1], argv[i + 1:]) if a == "sandbox" else (argv, None)
    return argv, None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        head, sandbox_rest = _split_sandbox(list(sys.argv[1:] if argv is None else argv))
        args = parser.parse_args(head)
        if sandbox_rest is not None:
            args.rest = sandbox_rest
        if not args.command:
            raise UsageError("trading-readiness: a COMMAND is required (check, probe, verify, serve, heal, "
                             "catalog, sandbox); see --help")
        return int(COMMANDS[args.command](args))
    except UsageError as exc:
        # an argument may contain a line break; the error stays one line
        print(f"error: {exc}".replace("\r", "\\r").replace("\n", "\\n"), file=sys.stderr)
        return EXIT_UNKNOWN
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN
    except CatalogError as exc:
        print(f"catalog error: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN
    except KeyboardInterrupt:
        return EXIT_UNKNOWN
    except BrokenPipeError:
        return EXIT_UNKNOWN
    except Exception as exc:  # Python's own traceback and exit 1 would read as DEGRADED to a caller
        text = " ".join(str(exc).split())
        # the bot's .env is not known here: redact what the process environment and the text hold
        redact = Redactor(secret_values(os.environ) + url_credentials(text))
        print(f"error: {type(exc).__name__}: {redact(text)}", file=sys.stderr)
        return EXIT_UNKNOWN


if __name__ == "__main__":
    raise SystemExit(main())
