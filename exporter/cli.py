"""`trading-readiness` command line. Exit codes follow the Nagios convention everywhere:
0 READY, 1 DEGRADED, 2 BLOCKED, 3 UNKNOWN (bad usage, bad config, could not evaluate)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from . import __version__
from .bot.botenv import Redactor, secret_values, url_credentials
from .core.catalog import CatalogError
from .core.catalog import load as load_catalog
from .core.config import DEFAULTS, Config, ConfigError
from .core.config import load as load_config
from .tools.preflight import BotRootError, config_check, require_bot_root

EXIT_UNKNOWN = 3


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit 3 (argparse would exit 2 = BLOCKED)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


#: Options every command accepts, before or after the command word. Given in both places, the
#: value after the command wins (the one nearest the command, as with any option given twice).
GLOBAL_HELP = {
    "--config": ("FILE", "config file (default: $TRADING_READINESS_CONFIG, else <bot root>/trading-readiness.yaml "
                         "if present, else the built-in defaults for stock-bot)"),
    "--bot-root": ("DIR", "the bot's working directory; paths in the config are relative to it (default: "
                          "bot_root: in the config, else $TRADING_READINESS_BOT_ROOT, else the current directory)"),
}


def _add_globals(p: argparse.ArgumentParser, *, in_command: bool) -> None:
    for flag, (metavar, text) in GLOBAL_HELP.items():
        # inside a command the option is left out of the namespace when absent, so it never
        # overwrites a value given before the command
        if in_command:
            p.add_argument(flag, metavar=metavar, help=text, default=argparse.SUPPRESS)
        else:
            p.add_argument(flag, metavar=metavar, help=text)


def _json_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON (default: off, a table for people)")


def build_parser() -> argparse.ArgumentParser:
    listen = DEFAULTS["exporter"]["listen"]
    heal_listen = DEFAULTS["healer"]["listen"]
    p = _Parser(prog="trading-readiness", description="Is the trading bot able to trade, right now, and why not? "
                "Exit codes: 0 READY, 1 DEGRADED, 2 BLOCKED, 3 UNKNOWN.",
                epilog="--config and --bot-root may also be given after the command; given in both places, "
                       "the value after the command wins.")
    _add_globals(p, in_command=False)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                   help="print the version and exit (default: off)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=text, description=text)
        _add_globals(c, in_command=True)
        return c

    c = command("check", "run every enabled check once, print a table and exit by readiness")
    _json_flag(c, "the CONTRACT result")
    c.add_argument("--only", nargs="+", metavar="FP", help="run only these failure points, e.g. --only FP-1.1 FP-1.3 "
                   "(default: every enabled point)")

    pr = command("probe", "trace a synthetic signal through the decision path (never orders)")
    _json_flag(pr, "the stages")

    v = command("verify", "config + all checks + probe + rule validation; writes the result record")
    _json_flag(v, "the verification record")

    s = command("serve", "run the Prometheus exporter and status page")
    s.add_argument("--listen", metavar="HOST:PORT", help=f"address to serve on (default: exporter.listen in the "
                   f"config, {listen})")

    h = command("heal", "run the Alertmanager webhook receiver that runs healers")
    h.add_argument("--listen", metavar="HOST:PORT", help=f"address to receive webhooks on (default: healer.listen "
                   f"in the config, {heal_listen})")
    h.add_argument("--insecure-no-auth", action="store_true", help="accept webhooks without a bearer token when "
                   "TRADING_READINESS_HEALER_TOKEN is unset (default: off, refuse to start without a token)")
    h.add_argument("--dry-run", action="store_true", help="log and record what would run, run nothing (default: "
                   "healer.dry_run in the config, false)")

    cat = command("catalog", "print the failure-point catalog")
    g = cat.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true", help="print the catalog as JSON (default: off, one line per point)")
    g.add_argument("--markdown", action="store_true", help="print docs/FAILURE_POINTS.md (default: off)")

    cfg = command("config", "validate the configuration and the bot root without the network (config check)")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="ACTION", parser_class=_Parser)
    cc = cfg_sub.add_parser("check", help="validate the config, the bot root, .env and the limits without "
                            "touching the network or spending UW quota; exit 0 if fine, else 3",
                            description="validate the config, the bot root, .env and the limits without touching "
                            "the network or spending UW quota; exit 0 if fine, else 3 with one line per problem")
    _add_globals(cc, in_command=True)

    gen = sub.add_parser("generate", help="render the Prometheus rules, the Alertmanager config and the Grafana "
                         "dashboards from a mixin config (docs/configuration.md#mixin-config)",
                         description="render the Prometheus rules, the Alertmanager config and the Grafana "
                         "dashboards from a mixin config (docs/configuration.md#mixin-config); exit 3 naming the "
                         "key of a bad config, writing nothing")
    gen.add_argument("--config", dest="mixin", metavar="FILE", help="the mixin config, a YAML file of overrides "
                     "(default: none, the built-in defaults: what this repository commits)")
    gen.add_argument("--out", metavar="DIR", default=".", help="where to write rules/, alertmanager/ and grafana/ "
                     "(with --fleet: also prometheus/, targets/) (default: the current directory)")
    gen.add_argument("--fleet", metavar="FILE", help="a fleet inventory (bots, shards, the central VictoriaMetrics, "
                     "the Alertmanager peers; examples/fleet.yaml): also write the shards' Prometheus configs, the "
                     "file_sd targets and per-bot healer routes (default: none, a single Prometheus)")

    sb = sub.add_parser("sandbox", help="run a simulated bot environment on loopback (its own options: "
                        "trading-readiness sandbox --help)")
    sb.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.bot_root)


def cmd_check(args: argparse.Namespace) -> int:
    from .bot.context import Context
    from .checks import registry
    from .core.engine import Engine
    from .tools.render import table

    cfg = _config(args)
    engine = Engine(Context(cfg), registry())
    if args.only:
        unknown = [fp for fp in args.only if fp not in cfg.catalog.points]
        if unknown:
            raise UsageError(f"unknown failure point {', '.join(unknown)} in --only")
        planned = [fp for fp in args.only if cfg.catalog[fp].detection != "implemented"]
        if planned:
            raise UsageError(f"no detection implemented yet for {', '.join(planned)}")
    require_bot_root(cfg)
    report = engine.report(args.only)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(table(report))
    return report.readiness.exit_code


def cmd_config(args: argparse.Namespace) -> int:
    """``config check``: one report line per thing looked at; each problem on stderr, exit 3."""
    if args.config_command != "check":
        raise UsageError("trading-readiness config: an ACTION is required (check); see config --help")
    result = config_check(_config(args))
    for line in result.lines:
        print(line)
    for problem in result.problems:
        print(f"problem: {problem}".replace("\r", "\\r").replace("\n", "\\n"), file=sys.stderr)
    if result.ok:
        print("ok: the config and the bot root look right (nothing was sent over the network)")
        return 0
    print(f"{len(result.problems)} problem(s)")
    return EXIT_UNKNOWN


def _with_bot_root(module: str, func: str) -> Callable[[argparse.Namespace], int]:
    """Commands that read the bot root: refuse a directory that is not one, in one line, before
    the command reports every failure point as failing."""
    def run(args: argparse.Namespace) -> int:
        require_bot_root(_config(args))
        return _delegate(module, func, args)
    return run


def cmd_catalog(args: argparse.Namespace) -> int:
    from .tools.render import catalog_markdown

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
             "how": p.how, "levels": p.levels, "depends_on": list(p.depends_on),
             "reported_by": dict(p.reported_by), "healer": p.healer,
             "no_healer_reason": p.no_healer_reason, "runbook": p.runbook, "params": p.params,
             "interval_seconds": p.interval_seconds, "timeout_seconds": p.timeout_seconds,
             "market_hours": p.market_hours, "observations": list(p.observations)}
            for p in cat
        ],
    }


#: commands whose code ships apart from the exporter's wheel: what to install for them
OPTIONAL = {"sandbox": "the sandbox is not installed: from a checkout, pip install '.[sandbox]'"}


def _delegate(module: str, func: str, args: argparse.Namespace) -> int:
    """Run ``module.func``, imported by name: the CLI sits on top and loads a command's code only
    when that command runs (the sandbox is an optional distribution the product never imports)."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module == exc.name or module.startswith(exc.name + ".")):
            raise UsageError(OPTIONAL.get(args.command, f"'{args.command}' is not available in this build")) from None
        raise
    return int(getattr(mod, func)(args))


COMMANDS = {
    "check": cmd_check,
    "catalog": cmd_catalog,
    "config": cmd_config,
    "probe": _with_bot_root("exporter.tools.probe", "cli_probe"),
    "verify": _with_bot_root("exporter.tools.verify", "cli_verify"),
    "serve": _with_bot_root("exporter.serve.server", "cli_serve"),
    "heal": lambda a: _delegate("healers.server", "cli_heal", a),
    "generate": lambda a: _delegate("rules.fleetgen" if a.fleet else "rules.render", "cli_generate", a),
    "sandbox": lambda a: _delegate("sandbox.cli", "cli_sandbox", a),
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
                             "catalog, config, generate, sandbox); see --help")
        return int(COMMANDS[args.command](args))
    except (UsageError, BotRootError) as exc:
        # an argument may contain a line break; the error stays one line
        print(f"error: {exc}".replace("\r", "\\r").replace("\n", "\\n"), file=sys.stderr)
        return EXIT_UNKNOWN
    except (ConfigError, CatalogError) as exc:
        print(f"{'config' if isinstance(exc, ConfigError) else 'catalog'} error: {exc}", file=sys.stderr)
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
