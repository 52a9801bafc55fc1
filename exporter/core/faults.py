"""Facts a check needs but cannot read, and which another point reports: typed, so that who
reports them is catalog data, never a sentence in a check.

The bot layer raises these; a check lets them pass. The engine looks the fault's ``kind`` up in
the point's catalog entry (``depends_on: [{id: FP-1.8, when: run_log_unreadable}]``) and skips
the point naming the point that reports the fact, so one cause is one alert. A fault the entry
does not declare is the point's own ERROR: no fact goes unreported because of a missing line.
"""

from __future__ import annotations

from typing import Any, ClassVar


class Unavailable(Exception):
    """A fact the check needs cannot be read; ``kind`` names the fact."""

    kind: ClassVar[str] = ""
    #: True when the reporting point is ERROR whenever this fault occurs: the skip then names it as
    #: its root cause (``skipped_by``), as a failing dependency is named
    owner_fails: ClassVar[bool] = False

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details
        #: gauges the check still records while it cannot judge (``Observation``)
        self.observations: list[Any] = []

    def skip_message(self, owner: str) -> str:
        return f"{self}; {owner} reports it"


class RunLogUnreadable(Unavailable):
    """``logs/run.jsonl`` cannot be read (FP-1.8 judges the run log itself)."""

    kind = "run_log_unreadable"


class BlockedLogUnreadable(Unavailable):
    """``state/blocked_trades.jsonl`` exists but cannot be read."""

    kind = "blocked_log_unreadable"


class CacheUnreadable(Unavailable):
    """The UW cache is missing, empty or does not parse (FP-1.2 judges the file)."""

    kind = "uw_cache_unreadable"


class AlpacaCredentialsMissing(Unavailable):
    """No Alpaca key or secret in the environment or ``.env`` (FP-4.2 is ERROR then)."""

    kind = "alpaca_credentials_missing"
    owner_fails = True


#: every kind a catalog entry may name in ``depends_on: [{id: ..., when: <kind>}]``
KINDS: dict[str, type[Unavailable]] = {c.kind: c for c in (RunLogUnreadable, BlockedLogUnreadable, CacheUnreadable,
                                                          AlpacaCredentialsMissing)}


#: the kinds of a failed broker request (``exporter.bot.broker.BrokerError.kind``); the catalog's
#: ``broker_errors`` says which point reports each of them
BROKER_ERROR_KINDS = ("auth", "forbidden", "rate_limit", "server", "timeout", "connection", "bad_response",
                      "not_found", "client")
