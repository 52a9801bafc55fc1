"""Bot integration: the bot asks "should I trade this cycle, and if not, why?" without being patched.

The old integration edited ``main.py`` in place; this is a library the bot imports instead::

    from exporter.integration import ReadinessGate

    gate = ReadinessGate(bot_root="/home/trader/stock-bot")   # exporter at 127.0.0.1:9870
    watcher = gate.start_watcher(interval_seconds=300)        # optional: logs readiness changes
    while True:
        decision = gate.gate()
        if decision.trade:
            run_cycle()
        else:
            log.warning("not trading this cycle: %s", decision.why())
        time.sleep(60)

Where the readiness comes from, in order:

1. the exporter's ``GET /api/failure_points`` (short timeout, 2 s by default), if it answers with
   a complete evaluation whose newest check is recent (``max_age_seconds``): a scrape costs
   the bot nothing, the exporter already ran the checks;
2. else the checks in-process, on the bot root (cached ``in_process_cache_seconds``, so a bot
   loop does not re-run them every cycle);
3. else nothing is known: readiness ``UNKNOWN``, and the decision is ``trade_when_unknown``
   (default **False**: the safe default is to not trade on a guess; the reasons say both why
   the exporter and the in-process checks failed, so the operator can fix it).

``BLOCKED`` never trades; ``DEGRADED`` trades unless ``trade_when_degraded=False``.
Nothing here writes anything: no file of the bot is created or changed.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .core.model import iso_utc

__all__ = ["Decision", "ReadinessGate", "ReadinessView", "Watcher"]

log = logging.getLogger("trading_readiness.integration")

DEFAULT_EXPORTER_URL = "http://127.0.0.1:9870"
READINESS_NAMES = ("READY", "DEGRADED", "BLOCKED", "UNKNOWN")


@dataclass(frozen=True)
class ReadinessView:
    """The current readiness and where it came from.

    ``source`` is ``"exporter"``, ``"in-process"`` or ``"none"`` (nothing could be evaluated);
    ``problems`` lists the failing points as ``"FP-x.y name: message"`` (critical first);
    ``errors`` says why a preferred source was not used (exporter down, stale, bad config).
    """

    readiness: str
    source: str
    critical_fps: tuple[str, ...] = ()
    warning_fps: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    timestamp: float = 0.0
    errors: tuple[str, ...] = ()

    def summary(self) -> str:
        head = f"{self.readiness} ({self.source})"
        if self.critical_fps:
            head += f", critical: {', '.join(self.critical_fps)}"
        if self.warning_fps:
            head += f", warnings: {', '.join(self.warning_fps)}"
        return head


@dataclass(frozen=True)
class Decision:
    """Whether to trade this cycle (``trade``) and, when not, why (``reasons``)."""

    trade: bool
    readiness: str
    reasons: tuple[str, ...]
    source: str
    view: ReadinessView = field(repr=False, compare=False, default_factory=lambda: ReadinessView("UNKNOWN", "none"))

    def __bool__(self) -> bool:
        return self.trade

    def why(self) -> str:
        """One line for the bot's log."""
        what = "trade" if self.trade else "do not trade"
        return f"{what}: {self.readiness} via {self.source}" + (f" - {'; '.join(self.reasons)}" if self.reasons else "")


class _Tracking:
    """Keeps every connection a handler opens in ``conns`` (so a deadline can cut them off)."""

    def __init__(self, conns: list[http.client.HTTPConnection]) -> None:
        super().__init__()
        self.conns = conns

    def _connect(self, cls: type[http.client.HTTPConnection]) -> Callable[..., http.client.HTTPConnection]:
        def connect(host: str, **kw: Any) -> http.client.HTTPConnection:
            conn = cls(host, **kw)
            self.conns.append(conn)
            return conn

        return connect


class _TrackedHTTP(_Tracking, urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connect(http.client.HTTPConnection), req)


class _TrackedHTTPS(_Tracking, urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connect(http.client.HTTPSConnection), req,
                            context=self._context)  # type: ignore[attr-defined]


def _read_within(req: urllib.request.Request, timeout: float) -> bytes:
    """GET ``req`` and read its body, all within ``timeout`` seconds.

    urlopen's timeout bounds each socket read: an exporter or proxy that trickles bytes would hold
    the bot's trading loop forever. The request runs in a worker; past the deadline its connection
    is shut down (the worker ends too) and ``TimeoutError`` is raised.
    """
    conns: list[http.client.HTTPConnection] = []
    opener = urllib.request.build_opener(_TrackedHTTP(conns), _TrackedHTTPS(conns))
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            with opener.open(req, timeout=timeout) as resp:
                box["body"] = resp.read(8 * 1024 * 1024)
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=run, daemon=True, name="readiness-read")
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        for conn in conns:
            with contextlib.suppress(OSError, AttributeError):
                conn.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
        raise TimeoutError(f"no complete answer within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["body"]  # type: ignore[no-any-return]


class ReadinessGate:
    """Reads readiness from the exporter or in-process and turns it into a per-cycle decision.

    Thread-safe: the watcher thread and the bot's loop may call it at the same time.
    """

    def __init__(
        self,
        exporter_url: str | None = DEFAULT_EXPORTER_URL,
        bot_root: str | None = None,
        config_file: str | None = None,
        *,
        timeout_seconds: float = 2.0,
        max_age_seconds: float = 120.0,
        in_process: bool = True,
        in_process_cache_seconds: float = 60.0,
        trade_when_degraded: bool = True,
        trade_when_unknown: bool = False,
        basic_auth: tuple[str, str] | None = None,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if exporter_url is not None and not exporter_url.startswith(("http://", "https://")):
            raise ValueError(f"exporter_url must be an http(s) URL, got {exporter_url!r}")
        if not timeout_seconds > 0:
            raise ValueError("timeout_seconds must be positive")
        self.exporter_url = exporter_url.rstrip("/") if exporter_url else None
        self.bot_root = bot_root
        self.config_file = config_file
        self.timeout = float(timeout_seconds)
        self.max_age = float(max_age_seconds)
        self.in_process = in_process
        self.cache_seconds = float(in_process_cache_seconds)
        self.trade_when_degraded = trade_when_degraded
        self.trade_when_unknown = trade_when_unknown
        self._auth = ("Basic " + base64.b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode()
                      if basic_auth else None)
        self._environ = environ
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, ReadinessView] | None = None

    # sources ----------------------------------------------------------------------------------
    def from_exporter(self) -> ReadinessView:
        """The exporter's latest evaluation; raises ``LookupError`` with the reason when unusable."""
        if self.exporter_url is None:
            raise LookupError("no exporter configured")
        headers = {"Accept": "application/json", **({"Authorization": self._auth} if self._auth else {})}
        # the URL's scheme is checked in __init__ (http or https only)
        req = urllib.request.Request(self.exporter_url + "/api/failure_points", headers=headers)  # noqa: S310
        try:
            body = _read_within(req, self.timeout)
        except urllib.error.HTTPError as exc:
            raise LookupError(f"exporter {self.exporter_url} answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(exc, TimeoutError) or isinstance(reason, TimeoutError):
                raise LookupError(f"exporter {self.exporter_url} did not answer within {self.timeout:g} s") from None
            raise LookupError(f"exporter {self.exporter_url} unreachable ({reason})") from None
        try:
            data = json.loads(body)
            readiness = str(data["readiness"])
            points: dict[str, Any] = data["failure_points"]
        except (ValueError, KeyError, TypeError, RecursionError):
            raise LookupError(f"exporter {self.exporter_url} sent a body that is not the readiness JSON") from None
        if readiness == "UNKNOWN" or data.get("ready") is False:
            pending = data.get("pending_fps") or []
            raise LookupError(f"exporter has not evaluated every check yet ({len(pending)} pending)")
        if readiness not in READINESS_NAMES:
            raise LookupError(f"exporter sent an unknown readiness {readiness!r}")
        checked = [float(p.get("last_check") or 0) for p in points.values() if isinstance(p, dict)]
        newest = max(checked, default=0.0)
        age = self._clock() - newest
        if age > self.max_age:
            # a scheduler that stopped would keep serving an old READY: never trust it
            raise LookupError(f"exporter results are stale: newest check {age:.0f} s old "
                              f"(limit {self.max_age:g} s)")
        return _view(data, "exporter", newest)

    def from_checks(self) -> ReadinessView:
        """Run every enabled check in-process (the same engine as ``check``); raises ``LookupError``."""
        from .bot.context import Context
        from .checks import registry
        from .core.config import ConfigError
        from .core.config import load as load_config
        from .core.engine import Engine

        try:
            cfg = load_config(self.config_file, self.bot_root)
        except ConfigError as exc:
            raise LookupError(f"config error: {exc}") from None
        try:
            ctx = Context(cfg, environ=self._environ, clock=self._clock)
            report = Engine(ctx, registry()).report()
            data = report.to_json()
        except Exception as exc:  # anything here means "could not evaluate", never a crash of the bot
            raise LookupError(f"in-process checks failed: {type(exc).__name__}: {exc}") from None
        return _view(data, "in-process", report.timestamp)

    def readiness(self) -> ReadinessView:
        """The current readiness from the best source that answers; never raises."""
        errors: list[str] = []
        if self.exporter_url is not None:
            try:
                return self.from_exporter()
            except LookupError as exc:
                errors.append(str(exc))
        if self.in_process:
            with self._lock:
                now = self._clock()
                if self._cached is not None and now - self._cached[0] < self.cache_seconds:
                    cached = self._cached[1]
                    return ReadinessView(cached.readiness, cached.source, cached.critical_fps, cached.warning_fps,
                                         cached.problems, cached.timestamp, tuple(errors))
                try:
                    view = self.from_checks()
                except LookupError as exc:
                    errors.append(str(exc))
                else:
                    view = ReadinessView(view.readiness, view.source, view.critical_fps, view.warning_fps,
                                         view.problems, view.timestamp, tuple(errors))
                    self._cached = (now, view)
                    return view
        else:
            errors.append("in-process checks are switched off")
        return ReadinessView("UNKNOWN", "none", timestamp=self._clock(), errors=tuple(errors))

    # the decision -----------------------------------------------------------------------------
    def gate(self) -> Decision:
        """Trade this cycle? BLOCKED: no; DEGRADED: ``trade_when_degraded``; UNKNOWN: ``trade_when_unknown``."""
        view = self.readiness()
        if view.readiness == "READY":
            return Decision(True, "READY", (), view.source, view)
        if view.readiness == "BLOCKED":
            return Decision(False, "BLOCKED", view.problems[:len(view.critical_fps)] or view.problems,
                            view.source, view)
        if view.readiness == "DEGRADED":
            reasons = view.problems if not self.trade_when_degraded else ()
            return Decision(self.trade_when_degraded, "DEGRADED", reasons, view.source, view)
        reasons = ("readiness unknown: " + "; ".join(view.errors),)
        return Decision(self.trade_when_unknown, "UNKNOWN", reasons, view.source, view)

    # watching ---------------------------------------------------------------------------------
    def start_watcher(self, interval_seconds: float = 300.0, logger: logging.Logger | None = None,
                      on_change: Callable[[ReadinessView | None, ReadinessView], None] | None = None) -> Watcher:
        """A daemon thread that reads readiness every ``interval_seconds`` and logs each change."""
        return Watcher(self, interval_seconds, logger or log, on_change).start()


def _view(data: dict[str, Any], source: str, timestamp: float) -> ReadinessView:
    points: dict[str, Any] = data.get("failure_points") or {}
    critical = tuple(str(fp) for fp in data.get("critical_fps") or ())
    warning = tuple(str(fp) for fp in data.get("warning_fps") or ())
    problems = []
    for fp in (*critical, *warning):
        p = points.get(fp) or {}
        message = p.get("last_error") or p.get("message") or ""
        problems.append(f"{fp} {p.get('name', '')}: {message}".strip())
    return ReadinessView(str(data["readiness"]), source, critical, warning, tuple(problems), timestamp)


class Watcher:
    """Logs readiness changes (readiness or the set of failing points) every N seconds; stoppable."""

    def __init__(self, gate: ReadinessGate, interval_seconds: float, logger: logging.Logger,
                 on_change: Callable[[ReadinessView | None, ReadinessView], None] | None = None) -> None:
        if not interval_seconds > 0:
            raise ValueError("interval_seconds must be positive")
        self.gate = gate
        self.interval = float(interval_seconds)
        self.logger = logger
        self.on_change = on_change
        self.last: ReadinessView | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="readiness-watcher", daemon=True)

    def start(self) -> Watcher:
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop and wait for the thread (at most ``timeout``: one readiness read in flight)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def poll(self) -> ReadinessView:
        """Read once; log and call ``on_change`` if it changed since the last read."""
        view = self.gate.readiness()
        before = self.last
        key = (view.readiness, view.critical_fps, view.warning_fps)
        if before is None or key != (before.readiness, before.critical_fps, before.warning_fps):
            level = logging.INFO if view.readiness == "READY" else logging.WARNING
            was = before.readiness if before is not None else "start"
            detail = "; ".join(view.problems or view.errors)
            self.logger.log(level, "trading readiness %s -> %s at %s%s", was, view.summary(),
                            iso_utc(view.timestamp or time.time()), f": {detail}" if detail else "")
            if self.on_change is not None:
                try:
                    self.on_change(before, view)
                except Exception as exc:  # the bot's callback must not kill the watcher
                    self.logger.error("readiness on_change callback raised %s", type(exc).__name__)
        self.last = view
        return view

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception as exc:  # defensive: readiness() does not raise, a logger might
                self.logger.error("readiness watcher: %s", type(exc).__name__)
            self._stop.wait(self.interval)
