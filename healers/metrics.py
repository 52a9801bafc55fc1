"""The healer's own metrics (``/metrics`` of ``heal``), every series pre-initialised for every
healable point so alerts on them work from the first scrape."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from exporter.core.config import Config

from .policy import OUTCOMES, REASONS, HealerSpec


class HealerMetrics:
    """One registry per receiver: attempts and skips by point, and what each point is doing now."""

    def __init__(self, config: Config, specs: dict[str, HealerSpec]) -> None:
        self.registry = CollectorRegistry()
        self.attempts = Counter("trading_healer_attempts", "Healer actions run, by outcome.",
                                ["fp", "outcome"], registry=self.registry)
        self.skipped = Counter("trading_healer_skipped", "Alerts deliberately not healed, by reason.",
                               ["fp", "reason"], registry=self.registry)
        self.running = Gauge("trading_healer_running", "1 while the failure point's action process runs.",
                             ["fp"], registry=self.registry)
        self.queued = Gauge("trading_healer_queued",
                            "1 while the point's accepted action waits for a free worker (healer.max_concurrent).",
                            ["fp"], registry=self.registry)
        self.stuck = Gauge("trading_healer_stuck",
                           "1 while the point has been queued, running or verifying for longer than its action's "
                           "timeout plus its verification (and a margin): healing it is wedged.",
                           ["fp"], registry=self.registry)
        self.gave_up = Gauge("trading_healer_gave_up",
                             "1 after max_attempts failed within window_seconds, until the alert resolves.",
                             ["fp"], registry=self.registry)
        self.backlog = Gauge("trading_healer_backlog",
                             "Alerts acknowledged (journaled) and not yet decided by the dispatcher.",
                             registry=self.registry)
        # static facts for the rules: TradingHealerGaveUp carries the point's category and healer
        self.info = Gauge("trading_healer_info", "A failure point this healer may heal (category, healer name); "
                          "always 1.", ["fp", "category", "healer"], registry=self.registry)
        for fp, spec in specs.items():
            self.info.labels(fp, config.catalog[fp].category, spec.name).set(1)
            for outcome in OUTCOMES:
                self.attempts.labels(fp, outcome)
            for reason in REASONS:
                self.skipped.labels(fp, reason)
            self.running.labels(fp).set(0)
            self.queued.labels(fp).set(0)
            self.stuck.labels(fp).set(0)
            self.gave_up.labels(fp).set(0)
