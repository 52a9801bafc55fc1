"""Alpaca through alpaca-py, bounded.

alpaca-py sets no request timeout and retries 429/504 three times 3 s apart; a readiness check
must never hang on the broker, so every request gets a timeout and the retries are disabled (a
429 is itself a finding). Raw JSON is read (``RESTClient.get``, which ``TradingClient.get`` is)
rather than alpaca-py's models so a field Alpaca removes cannot turn a healthy account into a parse
error. alpaca-py's trading module is not imported: its request models import pandas, which was most
of a command's start-up CPU.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
from alpaca.common.enums import BaseURL
from alpaca.common.exceptions import APIError
from alpaca.common.rest import RESTClient
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from ..core.fields import decimal

_EXAMPLE_URL = "https://paper-api.alpaca.markets"


class TradingREST(RESTClient):
    """alpaca-py's ``TradingClient`` as far as reading goes: its REST client with the trading API's
    version and paper URL (``alpaca.trading.client.TradingClient.__init__``); ``get`` is inherited."""

    def __init__(self, api_key: str | None, secret_key: str | None, url_override: str | None = None) -> None:
        super().__init__(api_key=api_key, secret_key=secret_key, api_version="v2",
                         base_url=url_override or BaseURL.TRADING_PAPER, sandbox=True)


class BrokerError(Exception):
    """kind: one of ``exporter.core.faults.BROKER_ERROR_KINDS`` (auth, forbidden, rate_limit, server,
    timeout, connection, bad_response, not_found, client).

    others_answered: the broker answered another request successfully between this request's
    start and its failure, so it was reachable meanwhile (set by :meth:`Broker.get`)."""

    def __init__(self, kind: str, message: str, status: int | None = None, code: int | None = None) -> None:
        self.kind, self.status, self.code = kind, status, code
        self.others_answered = False
        super().__init__(message)


#: the sockets the current thread's request uses, so a request past its deadline can be cut off
_tracking = threading.local()


def _track(sock: socket.socket | None) -> None:
    socks = getattr(_tracking, "socks", None)
    if socks is not None and sock is not None:
        socks.append(sock)


class _TrackedHTTPConnection(HTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().request(*args, **kwargs)
        _track(self.sock)


class _TrackedHTTPSConnection(HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().request(*args, **kwargs)
        _track(self.sock)


class _TrackedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _TrackedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


class _TrackedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _TrackedHTTPPool, "https": _TrackedHTTPSPool}


class _RequestThreads:
    """Reusable daemon threads that run requests for :class:`BoundedSession`.

    A request is handed to an idle thread, or to a new one when none is idle, so a request that
    never returns (a resolver that does not answer cannot be cut off) holds back no other; a
    thread left idle for ``idle`` seconds ends, and at most ``keep`` wait for work. Starting a
    thread per request cost a third of a loopback call's CPU.
    """

    def __init__(self, keep: int = 4, idle: float = 300.0) -> None:
        self.keep, self.idle = keep, idle
        self._lock = threading.Lock()
        self._tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._idle = 0
        self._queued = 0

    def submit(self, task: Callable[[], None]) -> None:
        with self._lock:
            self._tasks.put(task)
            self._queued += 1
            start = self._queued > self._idle
        if start:
            threading.Thread(target=self._work, name="http-request", daemon=True).start()

    def _work(self) -> None:
        with self._lock:
            self._idle += 1
        while True:
            try:
                task = self._tasks.get(timeout=self.idle)
            except queue.Empty:
                with self._lock:
                    if self._queued:  # handed over as this wait ended: take it
                        continue
                    self._idle -= 1
                    return
            with self._lock:
                self._idle -= 1
                self._queued -= 1
            with contextlib.suppress(BaseException):  # the task hands its own failure to its caller
                task()
            with self._lock:
                if self._idle >= self.keep:
                    return
                self._idle += 1


_THREADS = _RequestThreads()


def _threads_after_fork() -> None:
    # a forked child has the bookkeeping but none of the threads
    global _THREADS
    _THREADS = _RequestThreads(_THREADS.keep, _THREADS.idle)


os.register_at_fork(after_in_child=_threads_after_fork)

#: the keyword arguments a GET may carry and still reuse its prepared request
_PREPARED_KWARGS = frozenset({"params", "headers", "timeout", "allow_redirects"})
#: prepared requests kept per session (the broker and UW ask a handful of URLs)
_PREPARED_MAX = 64


class BoundedSession(requests.Session):
    """A session whose every request has a total deadline and whose rate-limit headers are kept.

    requests' timeout bounds each socket read: a server that trickles a byte at a time (or a
    resolver that never answers) would hold the request, and the shared broker lookup every
    check waits on, forever. The request runs on a request thread; past the deadline its sockets
    are shut down (so the thread ends too) and the caller gets ``requests.Timeout``.

    A GET is prepared once per (URL, parameters, headers) and its copy sent again: preparing
    (merging the session's headers, hooks and auth, encoding the URL) cost about a third of a
    call. The copy is exactly what ``Session.request`` would build while the session holds no
    cookies and its settings are unchanged; anything else takes ``Session.request`` itself.
    """

    def __init__(self, timeout: float, base_url: str | None = None) -> None:
        super().__init__()
        self.timeout = timeout
        self.rate_limit: dict[str, int] = {}
        #: successful answers (status below 400) received so far, counted when they arrive, also
        #: those that come after their caller stopped waiting
        self.answered = 0
        self._lock = threading.Lock()
        self._prepared: dict[Any, requests.PreparedRequest] = {}
        self._settings: dict[Any, dict[str, Any]] = {}
        self.mount("http://", _TrackedAdapter())
        self.mount("https://", _TrackedAdapter())
        if base_url is not None:
            self.settle_environment(base_url)

    def settle_environment(self, base_url: str) -> None:
        """Read what requests takes from the environment once, for the one host this session talks to.

        With ``trust_env`` requests re-reads the whole process environment on every request
        (proxies, ``NO_PROXY``, the CA bundle, ~/.netrc): a third of a loopback call's CPU. The
        same settings are resolved here, as requests would for ``base_url``, and kept.
        """
        self.trust_env = False
        # *_PROXY, ALL_PROXY and NO_PROXY as requests applies them to this host (a URL requests
        # cannot parse gets none: its requests fail with requests' own reason)
        with contextlib.suppress(ValueError):
            self.proxies.update(requests.utils.get_environ_proxies(base_url))
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            self.verify = bundle
        try:
            netrc = requests.utils.get_netrc_auth(base_url)
        except ValueError:
            netrc = None
        if netrc:
            self.auth = netrc

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("timeout", self.timeout)
        send = self._prepared_send(method, url, args, kwargs)
        parent = super().request
        box: dict[str, Any] = {}
        socks: list[socket.socket] = []
        done = threading.Event()

        def run() -> None:
            _tracking.socks = socks
            try:
                box["response"] = answer = send() if send is not None else parent(method, url, *args, **kwargs)
                if answer.status_code < 400:
                    with self._lock:
                        self.answered += 1
            except BaseException as exc:  # handed to the caller's thread
                box["error"] = exc
            finally:
                _tracking.socks = None
                done.set()

        _THREADS.submit(run)
        if not done.wait(self.timeout):
            for sock in list(socks):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            raise requests.Timeout(f"no complete answer within {self.timeout:g} s")
        if "error" in box:
            raise box["error"]
        response: requests.Response = box["response"]
        limits = {}
        for header, key in (("X-RateLimit-Limit", "limit"), ("X-RateLimit-Remaining", "remaining"),
                            ("X-RateLimit-Reset", "reset")):
            count = decimal(response.headers.get(header, "").strip())
            if count is not None:
                limits[key] = count
        if limits:
            with self._lock:
                self.rate_limit = limits
        return response

    def _prepared_send(self, method: str | bytes, url: str | bytes, args: tuple[Any, ...],
                       kwargs: dict[str, Any]) -> Callable[[], requests.Response] | None:
        """The send of a GET whose prepared request is kept, or None for ``Session.request``'s path."""
        if (method != "GET" or not isinstance(url, str) or args or not _PREPARED_KWARGS.issuperset(kwargs)
                or self.trust_env or len(self.cookies)):
            return None
        params, headers = kwargs.get("params"), kwargs.get("headers")
        try:
            key = (url, tuple(params.items()) if params else None, tuple(headers.items()) if headers else None,
                   tuple(self.headers.items()), self.auth, tuple(self.hooks["response"]))
            hash(key)
            settings_key = (url, tuple(self.proxies.items()), self.stream, self.verify, self.cert)
            hash(settings_key)
        except (AttributeError, TypeError):  # parameters or headers that are not a plain mapping
            return None
        with self._lock:
            prepared = self._prepared.get(key)
            settings = self._settings.get(settings_key)
        if prepared is None:
            prepared = self.prepare_request(requests.Request(method="GET", url=url, headers=headers,
                                                             params=params or {}))
        if settings is None:
            settings = dict(self.merge_environment_settings(prepared.url, {}, None, None, None))
        with self._lock:
            if len(self._prepared) >= _PREPARED_MAX or len(self._settings) >= _PREPARED_MAX:
                self._prepared.clear()
                self._settings.clear()
            self._prepared[key] = prepared
            self._settings[settings_key] = settings
        send_kwargs = {"timeout": kwargs["timeout"], "allow_redirects": kwargs.get("allow_redirects", True),
                       **settings}
        return lambda: self.send(prepared.copy(), **send_kwargs)


@dataclass
class Broker:
    base_url: str
    key: str | None
    secret: str | None
    timeout: float = 5.0

    def __post_init__(self) -> None:
        self._client: TradingREST | None = None
        self._session = BoundedSession(self.timeout, self.base_url)

    @property
    def configured(self) -> bool:
        return bool(self.key and self.secret)

    @property
    def rate_limit(self) -> dict[str, int]:
        return dict(self._session.rate_limit)

    def _trading(self) -> TradingREST:
        if self._client is None:
            if not self.configured:
                raise BrokerError("auth", "Alpaca key or secret is not set (ALPACA_KEY/ALPACA_SECRET or aliases)")
            client = TradingREST(self.key, self.secret, url_override=self.base_url)
            client._session = self._session  # bounded timeout instead of none
            client._retry = 0  # a 429 is reported, not slept on
            self._client = client
        return self._client

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET ``/v2<path>`` and return the decoded JSON, or raise BrokerError (its
        ``others_answered`` says whether the broker answered another request meanwhile)."""
        client = self._trading()
        answered = self._session.answered
        try:
            return client.get(path, params)
        except (APIError, requests.RequestException, ValueError) as exc:
            error = self._error(path, exc)
        error.others_answered = self._session.answered != answered
        raise error

    def _error(self, path: str, exc: Exception) -> BrokerError:
        if isinstance(exc, APIError):
            return _api_error(exc)
        if isinstance(exc, requests.Timeout):
            return BrokerError("timeout", f"Alpaca did not answer {path} within {self.timeout:g} s")
        if isinstance(exc, requests.ConnectionError):
            return BrokerError("connection", f"cannot connect to Alpaca ({_reason(exc)})")
        if isinstance(exc, (requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema,
                            requests.exceptions.InvalidURL)):
            # these are ValueErrors too: without this a URL missing "https://" read as "not JSON"
            return BrokerError("connection", f"the Alpaca base URL is not a usable http(s) URL ({type(exc).__name__}; "
                                             f"expected e.g. {_EXAMPLE_URL})")
        if isinstance(exc, ValueError):
            return BrokerError("bad_response", f"Alpaca answered {path} with a body that is not JSON")
        return BrokerError("connection", f"Alpaca request failed ({type(exc).__name__})")


def _api_error(exc: APIError) -> BrokerError:
    status = exc.status_code
    try:
        code = exc.code
    except (ValueError, KeyError, TypeError, AttributeError):
        code = None
    try:
        message = exc.message
    except (ValueError, KeyError, TypeError, AttributeError):
        message = ""
    message = (message or "").strip()[:120]
    detail = f"HTTP {status}" + (f" code {code}" if code else "") + (f": {message}" if message else "")
    if status == 401:
        return BrokerError("auth", f"Alpaca rejected the credentials ({detail})", status, code)
    if status == 403:
        return BrokerError("forbidden", f"Alpaca refused access ({detail})", status, code)
    if status == 429:
        return BrokerError("rate_limit", f"Alpaca rate limit exceeded ({detail})", status, code)
    if status == 404:
        return BrokerError("not_found", f"Alpaca: not found ({detail})", status, code)
    if status is not None and status >= 500:
        return BrokerError("server", f"Alpaca server error ({detail})", status, code)
    return BrokerError("client", f"Alpaca refused the request ({detail})", status, code)


def _reason(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out", "No route to host",
                   "Temporary failure in name resolution", "Connection reset"):
        if marker in text:
            return marker.lower()
    return type(exc).__name__
