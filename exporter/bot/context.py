"""What a check may use: config, the bot's environment, the clock, the broker, UW, readers.

Everything that does I/O or tells time is a parameter here, so tests hand in a temporary bot
root, loopback servers and a controlled clock instead of patching our code.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from ..core.config import Config
from ..core.engine import current_run
from . import market, procs
from .botenv import BotEnv, Redactor, url_credentials
from .broker import Broker, BrokerError
from .readers import ChangedFileCache, Tails
from .uwclient import UWClient

T = TypeVar("T")


class _Memo:
    __slots__ = ("lock", "at", "value", "error")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.at = float("-inf")
        self.value: Any = None
        self.error: BaseException | None = None


class Context:
    """Shared by all checks of one engine; long-lived in the exporter, one-shot in the CLI."""

    def __init__(
        self,
        config: Config,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.root: Path = config.bot_root
        self.clock = clock
        self.env = BotEnv.load(self.root, environ)
        alpaca_url = config["alpaca"]["base_url"] or self.env.alpaca_base_url
        uw_url = config["uw"]["base_url"] or self.env.uw_base_url
        # logins inside configured URLs (base URLs, FP-6.6 extra_urls) are echoed by error messages
        self.redact = Redactor([*self.env.secrets(), *url_credentials(json.dumps(config.data, default=str))])
        self.broker = Broker(alpaca_url, self.env.alpaca_key, self.env.alpaca_secret,
                             float(config["alpaca"]["timeout_seconds"]))
        self.uw = UWClient(uw_url, self.env.uw_key, float(config["uw"]["timeout_seconds"]))
        self.files = ChangedFileCache()
        self.tails = Tails()
        #: state a check keeps between cycles (e.g. the last UW auth probe), keyed by the check
        self.state: dict[str, dict[str, Any]] = {}
        self._memos: dict[str, _Memo] = {}
        self._memos_lock = threading.Lock()

    # time ---------------------------------------------------------------------------------
    def now(self) -> float:
        return self.clock()

    def now_dt(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    # paths --------------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        return self.config.path(name)

    def state_for(self, fp: str) -> dict[str, Any]:
        return self.state.setdefault(fp, {})

    # shared, rate-limited lookups ---------------------------------------------------------
    def shared(self, key: str, ttl: float, fn: Callable[[], T]) -> T:
        """Call ``fn`` at most once per ``ttl`` seconds across all checks; errors are shared too.

        Concurrent callers wait for the one in flight, so FP-4.2, FP-4.3 and FP-3.2 cost one
        ``/v2/account`` request, and a broker that hangs costs one timeout, not three.
        """
        with self._memos_lock:
            memo = self._memos.setdefault(key, _Memo())
        with memo.lock:
            # a clock stepped back (NTP, a test) makes the age negative: that is no fresh answer
            if 0 <= self.clock() - memo.at < ttl:
                if memo.error is not None:
                    raise memo.error
                return memo.value  # type: ignore[no-any-return]
            try:
                memo.value, memo.error = fn(), None
            except Exception as exc:
                memo.value, memo.error = None, exc
            memo.at = self.clock()
            if memo.error is not None:
                raise memo.error
            return memo.value  # type: ignore[no-any-return]

    def per_cycle(self, key: str, fn: Callable[[], T]) -> T:
        """``fn()`` once for all the checks of the engine run the caller belongs to (a check
        called on its own, outside a run, computes it itself). Unlike :meth:`shared`, no time is
        involved: the next run computes it again, whatever the clock says."""
        memo = current_run()
        return fn() if memo is None else memo.get(key, fn)

    def process_table(self) -> procs.CmdlineTable | None:
        """The raw command lines of the host's processes, scanned once per engine run for every
        point that looks at processes."""
        return self.per_cycle("process-table", procs.cmdlines)

    def broker_get(self, path: str, params: dict[str, Any] | None = None, ttl: float | None = None) -> Any:
        ttl = float(self.config["alpaca"]["cache_seconds"]) if ttl is None else ttl
        if path == "/clock" and not params:
            return self.broker_clock(ttl)[0]
        key = "alpaca:" + path + (":" + repr(sorted(params.items())) if params else "")
        return self.shared(key, ttl, lambda: self.broker.get(path, params))

    def broker_clock(self, ttl: float | None = None) -> tuple[Any, float, float]:
        """The broker's ``/v2/clock`` answer and this context's clock just before and just after
        the request (what the clock offset is measured from): one request serves FP-4.1, the
        market session and the offset of FP-4.9 and FP-6.8 alike."""
        ttl = float(self.config["alpaca"]["cache_seconds"]) if ttl is None else ttl

        def fetch() -> tuple[Any, float, float]:
            t0 = self.now()
            answer = self.broker.get("/clock")
            return answer, t0, self.now()

        return self.shared("alpaca:/clock", ttl, fetch)

    def session(self) -> market.Session:
        """The market session: the broker's clock when it answers, else regular NY hours."""
        mcfg = self.config["market"]
        now = self.now_dt()
        try:
            clock = self.broker_get("/clock", ttl=float(mcfg["clock_cache_seconds"]))
            if not isinstance(clock, dict) or not isinstance(clock.get("is_open"), bool):
                # a clock whose is_open is "false" or missing cannot say the market is open (FP-4.1 errors)
                raise BrokerError("bad_response", "clock has no boolean is_open")
        except BrokerError:
            return market.local_session(now, float(mcfg["premarket_seconds"]))
        days: set[Any] | None = None
        try:
            # the trading day is New York's: between 19:00 and 24:00 ET the UTC date is tomorrow
            today = now.astimezone(market.NY).date().isoformat()
            cal = self.broker_get("/calendar", {"start": today, "end": today},
                                  ttl=float(mcfg["calendar_cache_seconds"]))
            days = market.calendar_days(cal)
        except BrokerError:
            days = None
        return market.from_clock(clock, now, float(mcfg["premarket_seconds"]), days)
