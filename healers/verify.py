"""Proof of healing: the failure point (and what it depends on) re-evaluated by the engine until
it is OK or the verification times out."""

from __future__ import annotations

import threading
import time

from exporter.core.config import Config


def transitive_deps(config: Config, fp: str) -> list[str]:
    seen: list[str] = []
    todo = [fp]
    while todo:
        cur = todo.pop()
        if cur in seen:
            continue
        seen.append(cur)
        todo.extend(config.catalog[cur].depends_on)
    return seen


def verify_point(config: Config, fp: str, timeout: float, interval: float, stop: threading.Event) -> tuple[bool, str]:
    """Re-evaluate ``fp`` (and what it depends on) until it is OK or ``timeout`` passes."""
    from exporter.bot.context import Context
    from exporter.checks import registry
    from exporter.core.engine import Engine

    deadline = time.monotonic() + timeout
    detail = "not evaluated"
    runs = 0
    while True:
        runs += 1
        try:
            # a fresh context each time: nothing cached from before the action may vouch for it
            result = Engine(Context(config), registry()).run(transitive_deps(config, fp)).get(fp)
            if result is None:
                detail = "the engine returned no result"
            else:
                detail = f"{result.status.name}: {result.outcome.message}"[:300]
                if result.status.name == "OK":
                    return True, f"OK after {runs} evaluation(s): {result.outcome.message}"[:300]
        except Exception as exc:  # verification must end in a recorded outcome, never a dead worker
            detail = f"evaluation raised {type(exc).__name__}: {exc}"[:300]
        if time.monotonic() + interval > deadline or stop.wait(interval):
            return False, f"not OK within {timeout:g} s ({runs} evaluation(s)); last: {detail}"
