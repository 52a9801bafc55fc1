"""What several checks read from Alpaca: the account, the broker clock's offset, and which point
owns a failed request (one cause, one alert).
"""

from __future__ import annotations

from typing import Any

from ..core import catalog
from ..core.faults import AlpacaCredentialsMissing
from ..core.model import Outcome
from . import market
from .broker import BrokerError
from .context import Context


def broker_read(ctx: Context, path: str, params: dict[str, Any] | None = None) -> Any:
    """``ctx.broker_get``, asked once more when its failure may belong to a broker outage that has
    ended since.

    A request that got no answer, a refusal or a 5xx while the broker answered nothing else
    cannot tell a broken endpoint from an outage of the whole broker. If the broker clock then
    answers, such an outage is over (it may have ended only while the clock was asked): the
    endpoint is asked again, with a fresh request, and that answer stands. Blaming the first
    failure on the endpoint would leave an ERROR on the point for its whole interval after the
    broker recovered. A failure while the broker answered other requests is the endpoint's own
    and is not asked again; while the clock fails too, the failure is the outage's
    (``broker_failed``)."""
    try:
        return ctx.broker_get(path, params)
    except BrokerError as exc:
        if exc.others_answered or not _reachability(exc) or not _clock_answers(ctx):
            raise
    return ctx.broker_get(path, params, ttl=0)


def account(ctx: Context) -> dict[str, Any]:
    data = broker_read(ctx, "/account")
    if not isinstance(data, dict):
        raise BrokerError("bad_response", "Alpaca /v2/account did not return an object")
    return data


def account_or_failure(ctx: Context) -> dict[str, Any] | Outcome:
    """The account, or the outcome of failing to read it (``broker_failed``)."""
    try:
        return account(ctx)
    except BrokerError as exc:
        return broker_failed(exc, "read the account", ctx)


def positions_or_failure(ctx: Context) -> list[Any] | Outcome:
    """The open positions, or the outcome of failing to list them (``broker_failed``, or ERROR for
    an answer that is not a list)."""
    try:
        raw = broker_read(ctx, "/positions")
    except BrokerError as exc:
        # a 429, an outage or bad credentials is another point's alert, not a second critical here
        return broker_failed(exc, "list positions", ctx)
    if not isinstance(raw, list):
        return Outcome.error("Alpaca /v2/positions did not return a list")
    return raw


def error_owner(exc: BrokerError) -> str | None:
    """The point that reports this failed request (the catalog's ``broker_errors: owners``), if any."""
    return catalog.load().broker_errors.owners.get(exc.kind)


def clock_failure_owner(exc: BrokerError) -> str | None:
    """The point that reports a failed broker clock request: the kind's owner, else the point
    that requests the clock every cycle (the catalog's ``broker_errors: clock``)."""
    return error_owner(exc) or catalog.load().broker_errors.clock


def broker_failed(exc: BrokerError, doing: str, ctx: Context | None = None) -> Outcome:
    """A failed request: SKIPPED when the cause is another point's (one cause, one alert, and no
    ERROR lingering for this point's whole interval after a transient outage), else ERROR.

    A 5xx, timeout or refused connection on one endpoint while the clock answers is not FP-4.1's
    to report (FP-4.1 is OK): skipping would leave a dead /v2/account or /v2/orders unreported
    by every point, so it is this point's ERROR."""
    owner = error_owner(exc)
    if _reachability(exc) and ctx is not None and _clock_answers(ctx):
        return Outcome.error(f"cannot {doing}: {exc} (the broker clock answers: this endpoint fails on its own)",
                             problem=exc.kind)
    if owner is not None:
        out = Outcome.skipped(f"cannot {doing}: {exc} (reported by {owner})", depends_on=owner)
        out.skipped_by = owner
        return out
    return Outcome.error(f"cannot {doing}: {exc}", problem=exc.kind)


def _reachability(exc: BrokerError) -> bool:
    """A failure the clock point reports for the whole broker (no answer, a refusal, a 5xx), unless
    the clock answers while this endpoint fails; a 429 is the shared budget, never one endpoint's."""
    owner = error_owner(exc)
    return owner is not None and owner == catalog.load().broker_errors.clock and exc.kind != "rate_limit"


def _clock_answers(ctx: Context) -> bool:
    try:
        ctx.broker_get("/clock")  # memoised: FP-4.1 made this request in the same cycle
    except BrokerError:
        return False
    return True


def broker_offset(ctx: Context) -> tuple[float, float]:
    """(broker clock minus local clock, uncertainty), seconds, from a /v2/clock request at most
    ``alpaca.cache_seconds`` old.

    The request's round trip bounds the error: the broker's timestamp was taken somewhere between
    our send and our receive. The request is the one FP-4.1 and the market session read (one
    request per cycle), shared by FP-4.9 and FP-6.8.
    """
    clock, t0, t1 = ctx.broker_clock(float(ctx.config["alpaca"]["cache_seconds"]))
    ts = market.parse_ts(clock.get("timestamp")) if isinstance(clock, dict) else None
    if ts is None:
        raise BrokerError("bad_response", "Alpaca /v2/clock has no timestamp")
    return ts.timestamp() - (t0 + t1) / 2, (t1 - t0) / 2


def require_credentials(ctx: Context, prefix: str = "", **details: Any) -> None:
    """:class:`AlpacaCredentialsMissing` without an Alpaca key and secret (FP-4.2 names the variable)."""
    if not ctx.broker.configured:
        lead = f"{prefix}; " if prefix else ""
        raise AlpacaCredentialsMissing(f"{lead}Alpaca credentials are not set", **details)
