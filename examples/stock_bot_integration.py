"""How stock-bot's main loop asks trading-readiness whether to trade, without patching the bot.

In stock-bot, the three marked lines go into ``main.py``'s loop (the bot's own code stays
as it is: ``run_cycle`` below stands for its existing cycle function). Runnable as is against
the sandbox or any bot root::

    python examples/stock_bot_integration.py --bot-root /home/trader/stock-bot --cycles 3

It prints one line per cycle: whether the cycle would trade, and if not, why. Exit code 0
after ``--cycles`` cycles (run forever with ``--cycles 0``); 3 on bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from exporter.integration import DEFAULT_EXPORTER_URL, ReadinessGate  # noqa: E402

log = logging.getLogger("stock_bot")


def run_cycle(n: int) -> None:
    """Stands for stock-bot's own cycle (read cache, cluster, score, gates, orders)."""
    log.info("cycle %d: trading cycle runs", n)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bot-root", default=".", help="the bot's working directory (default: .)")
    p.add_argument("--config", help="trading-readiness config file (default: as the CLI finds it)")
    p.add_argument("--exporter-url", default=DEFAULT_EXPORTER_URL,
                   help=f"the exporter to ask first (default {DEFAULT_EXPORTER_URL}); 'none' for in-process only")
    p.add_argument("--cycles", type=int, default=3, help="cycles to run, 0 for ever (default 3)")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between cycles (default 60)")
    p.add_argument("--watch-seconds", type=float, default=300.0,
                   help="how often the background watcher logs readiness changes (default 300)")
    p.add_argument("--no-trade-when-degraded", action="store_true", help="skip cycles while DEGRADED")
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return 3 if exc.code else 0
    if args.cycles < 0 or args.interval < 0 or args.watch_seconds <= 0:
        print("error: --cycles and --interval must be >= 0 and --watch-seconds > 0", file=sys.stderr)
        return 3
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    # (1) once at start-up: where readiness comes from and what to do when DEGRADED/UNKNOWN
    try:
        gate = ReadinessGate(None if args.exporter_url == "none" else args.exporter_url,
                             bot_root=args.bot_root, config_file=args.config,
                             trade_when_degraded=not args.no_trade_when_degraded)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    # (2) optional: a daemon thread that logs every readiness change
    watcher = gate.start_watcher(interval_seconds=args.watch_seconds)
    n = 0
    try:
        while args.cycles == 0 or n < args.cycles:
            n += 1
            # (3) every cycle, before trading
            decision = gate.gate()
            if decision.trade:
                run_cycle(n)
            else:
                log.warning("cycle %d: not trading: %s", n, decision.why())
            if args.cycles == 0 or n < args.cycles:
                time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    finally:
        watcher.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
