"""`trading-readiness serve`: the Prometheus exporter, the readiness API and the status page.

Every answer comes from the scheduler's latest results; no request ever runs a check, so a
broker that hangs shows up as an ERROR on the page instead of a page that hangs. Bound to
127.0.0.1 by default; TLS and basic auth are optional and off by default.

Basic-auth hashes (``exporter.basic_auth_users: {user: hash}``) use the stdlib-only format
``pbkdf2_sha256$<iterations>$<salt hex>$<hash hex>``; make one with
``python -m exporter.serve.server hash-password`` (reads the password without echo).
"""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import hmac
import json
import logging
import os
import secrets
import signal
import ssl
import sys
import threading
import time
from importlib import resources
from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .. import __version__
from ..core.config import Config, ConfigError
from ..core.config import load as load_config
from ..core.fields import host_port
from . import affinity
from .httpd import ON_POOL, SWITCH_INTERVAL, BoundedHTTPServer, OnPool, Request, Response
from .metrics import IsolatingRegistry, exposition, make_registry
from .premarket import PremarketVerifier
from .scheduler import Scheduler, exporter_config_problems, first_cycle_bound, freeze_startup_heap

log = logging.getLogger("trading_readiness.exporter")

PBKDF2_ITERATIONS = 200_000


# --- password hashes ------------------------------------------------------------------------
def hash_password(password: str, iterations: int = PBKDF2_ITERATIONS, salt: bytes | None = None) -> str:
    """A salted PBKDF2-SHA256 hash in the ``pbkdf2_sha256$iter$salt$hash`` format."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against a stored hash; a malformed hash never matches."""
    try:
        scheme, iters, salt_hex, hash_hex = stored.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        digest = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt_hex), int(iters))
        return hmac.compare_digest(digest, bytes.fromhex(hash_hex))
    except (ValueError, TypeError):
        return False


# --- logging --------------------------------------------------------------------------------
class _LineFormatter(logging.Formatter):
    """One line per record: ``ts level=... msg="..."``, secrets replaced by the bot's redactor."""

    def __init__(self, redact: Any) -> None:
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        msg = self.redact(record.getMessage()).replace("\n", " ").replace('"', "'")
        ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
        return f'{ts} level={record.levelname.lower()} msg="{msg}"'


def setup_logging(scheduler: Scheduler) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LineFormatter(lambda text: scheduler.ctx.redact(text)))
    root = logging.getLogger("trading_readiness")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


# --- HTTP -----------------------------------------------------------------------------------
def status_page() -> bytes:
    return resources.files("exporter.serve").joinpath("status_page.html").read_bytes()


#: handler threads: every answer is built from the scheduler's snapshot (the exposition cached per
#: state change), so a few serve any number of scrapers; basic auth's hash is the costliest step
HTTP_WORKERS = 4
#: open connections at most; idle ones give way to new clients beyond this
MAX_CONNECTIONS = 512
#: a client that opens a connection and sends nothing (or a byte at a time) holds it this long
READ_TIMEOUT = 10.0
#: POST bodies (/-/reload takes none) are read and dropped up to this size, refused above it
MAX_BODY_BYTES = 65536
SECURITY_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


class ExporterServer(BoundedHTTPServer):
    """The exporter's HTTP side on the bounded server: connections are protocols on one event-loop
    thread, so thousands of idle or slow clients cost no thread each and a scrape is still answered
    among them. A scrape of an exposition already built is answered on the loop itself; anything
    that builds (a changed exposition, the API, the status page, basic auth) runs on a fixed pool."""

    def __init__(self, address: tuple[str, int], scheduler: Scheduler, listen: bool = True,
                 tls: ssl.SSLContext | None = None) -> None:
        self.scheduler = scheduler
        #: the failure points and the exporter's health: built from the scheduler's snapshot
        self.core_registry = make_registry(scheduler)
        #: other collectors (e.g. the pre-market verifier) register here; rendered on every scrape
        self.registry = IsolatingRegistry()
        self.page = status_page()
        self._metrics_lock = threading.Lock()
        self._metrics_cache: tuple[int, bytes] | None = None
        #: the whole exposition, with the key it was built for (see ``_body_key``)
        self._body_cache: tuple[tuple[Any, ...], bytes] | None = None
        super().__init__(address, self._handle, precheck=self._precheck, precheck_on_loop=True, workers=HTTP_WORKERS,
                         max_body=MAX_BODY_BYTES, read_timeout=READ_TIMEOUT, max_connections=MAX_CONNECTIONS,
                         backlog=128, name="exporter-http", tls=tls, listen=listen, inline=self._inline)

    def metrics_body(self) -> bytes:
        """The full exposition: the cached core plus every collector in ``self.registry``; the
        whole of it is built again only when ``_body_key`` changed (or cannot be known)."""
        key = self._body_key()
        built = self._built(key)
        if built is not None:
            return built
        extra = exposition(self.registry)
        core = self._core_body()
        body = core + self.scheduler.ctx.redact(extra.decode()).encode() if extra else core
        if key is not None:
            self._body_cache = (key, body)
        return body

    def _body_key(self) -> tuple[Any, ...] | None:
        """What the whole exposition depends on: the scheduler's generation and the state of every
        other collector, or None when a collector cannot say (it is then rendered every scrape).
        Read before building, so a change during a build only makes the next scrape rebuild."""
        key: list[Any] = [self.scheduler.generation]
        for collector in self.registry.collectors():
            state = getattr(collector, "state_key", None)
            if state is None:
                return None
            key.append(state())
        return tuple(key)

    def _built(self, key: tuple[Any, ...] | None) -> bytes | None:
        """The exposition built for ``key``, if that is the one kept."""
        cached = self._body_cache
        return cached[1] if key is not None and cached is not None and cached[0] == key else None

    def _inline(self, req: Request) -> Response | None:
        """On the event loop, once the precheck has let the request in (basic auth included): a
        scrape whose exposition is already built is answered at once, with no hand-over to the pool
        and back; anything else (a rebuild, the API, the status page) goes to the pool."""
        if req.path != "/metrics" or req.method not in ("GET", "HEAD"):
            return None
        built = self._built(self._body_key())
        return None if built is None else _answer(200, built, CONTENT_TYPE_LATEST)

    def _core_body(self) -> bytes:
        """The core exposition, rebuilt only when the scheduler's state changed since the last scrape.

        Many scrapers (several Prometheus replicas, a curious person) then cost one build per
        check batch instead of one per request. The generation is read before building, so a
        change during the build only makes the next scrape rebuild; a body is never older than
        its key. Only the snapshot collector is cached: it is the only one whose changes the
        generation tracks.
        """
        generation = self.scheduler.generation
        cached = self._metrics_cache
        if cached is not None and cached[0] == generation:
            return cached[1]
        with self._metrics_lock:  # concurrent scrapes after a change: one builds, the rest reuse
            cached = self._metrics_cache
            if cached is not None and cached[0] == generation:
                return cached[1]
            body = self.scheduler.ctx.redact(exposition(self.core_registry).decode()).encode()
            self._metrics_cache = (generation, body)
            return body

    # requests ----------------------------------------------------------------------------------
    def _precheck(self, req: Request) -> Response | OnPool | None:
        """From the request head: authentication, then a POST to a path that takes none is
        answered (405/404) without reading its body, however long it says it is. Run on the event
        loop; with basic auth configured it asks for the pool (a password hash would block)."""
        if self.scheduler.config["exporter"]["basic_auth_users"] and threading.get_ident() == self._loop_thread:
            return ON_POOL
        refused = self._authorize(req)
        if refused is None and req.method == "POST" and req.path != "/-/reload":
            refused = self._handle(req)
        return refused

    def _authorize(self, req: Request) -> Response | None:
        """Basic auth from the request head, before any body is read; None lets the request in."""
        users: dict[str, str] = self.scheduler.config["exporter"]["basic_auth_users"] or {}
        if not users:
            return None
        header = req.headers.get("authorization", "")
        if header.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                user, password = "", ""
            stored = users.get(user)
            # verify against a dummy hash for unknown users so timing does not reveal user names
            ok = verify_password(password, stored or _DUMMY_HASH)
            if stored and ok:
                return None
        return _text(401, "unauthorized", {"WWW-Authenticate": 'Basic realm="trading-readiness"'})

    def _handle(self, req: Request) -> Response:
        if req.method in ("GET", "HEAD"):
            return self._get(req.path)
        if req.method == "POST":
            return self._post(req.path)
        return _text(405 if req.path in ("/", "/metrics", "/api/failure_points") else 404, "not allowed")

    def _get(self, path: str) -> Response:
        sched = self.scheduler
        if path == "/metrics":
            return _answer(200, self.metrics_body(), CONTENT_TYPE_LATEST)
        if path == "/api/failure_points":
            return _answer(200, sched.ctx.redact(json.dumps(sched.api_json())).encode(), "application/json")
        if path in ("/", "/index.html"):
            return _answer(200, self.page, "text/html; charset=utf-8")
        if path == "/-/healthy":
            return _text(200, "OK")
        if path == "/-/ready":
            snap = sched.snapshot()
            if snap.ready:
                return _text(200, "ready")
            pending = len([fp for fp in snap.enabled if fp not in snap.results])
            return _text(503, f"not ready: {pending} of {len(snap.enabled)} checks have not run yet")
        return _text(404, "not found (try /, /metrics, /api/failure_points, /-/healthy, /-/ready)")

    def _post(self, path: str) -> Response:
        if path == "/-/reload":
            if self.scheduler.reload():
                return _text(200, "config reloaded")
            return _text(500, "config reload failed; the running config is kept (see the exporter log)")
        return _text(405 if path in ("/", "/metrics", "/api/failure_points") else 404, "not allowed")


def _answer(code: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> Response:
    return Response(code, body, ctype, {"Server": SERVER_NAME, **SECURITY_HEADERS, **(extra or {})})


def _text(code: int, text: str, extra: dict[str, str] | None = None) -> Response:
    return _answer(code, (text + "\n").encode(), "text/plain; charset=utf-8", extra)


SERVER_NAME = f"trading-readiness/{__version__}"
_DUMMY_HASH = hash_password("not a password", salt=b"0" * 16)


def parse_listen(value: str) -> tuple[str, int]:
    addr = host_port(value)
    if addr is None:
        raise ConfigError([f"--listen must be HOST:PORT, got {value!r}"])
    return addr


def make_server(scheduler: Scheduler, listen: str, accept: bool = True) -> ExporterServer:
    """Bind the server (TLS when the config names a cert and key). Errors are ConfigError lines.

    With ``accept=False`` the port is taken (so a busy port fails at once) but nothing listens:
    a client is refused until ``server_activate()``, which ``serve`` calls after the first cycle.
    """
    cfg: Config = scheduler.config
    problems = exporter_config_problems(cfg)
    if problems:
        raise ConfigError(problems)
    host, port = parse_listen(listen)
    tls: ssl.SSLContext | None = None
    cert, key = cfg["exporter"]["tls_cert_file"], cfg["exporter"]["tls_key_file"]
    if cert and key:
        try:
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls.minimum_version = ssl.TLSVersion.TLSv1_2
            tls.load_cert_chain(str(cfg.resolve(cert)), str(cfg.resolve(key)))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError([f"exporter.tls_cert_file/tls_key_file in {cfg.source} cannot be loaded: "
                               f"{getattr(exc, 'strerror', None) or exc}"]) from None
    try:
        server = ExporterServer((host, port), scheduler, listen=accept, tls=tls)
    except OSError as exc:
        raise ConfigError([f"cannot listen on {listen}: {exc.strerror or exc}"]) from None
    return server


def serve(config: Config, listen: str | None, config_file: str | None = None,
          bot_root: str | None = None) -> int:
    """Evaluate every enabled point once, then listen: the first scrape already has every series.

    Nothing is guessed meanwhile, and nothing answers: Prometheus sees the target down for these
    seconds instead of a scrape without statuses (which alerts would read as "no data"). A hung
    check is ERROR at its own timeout, so the wait ends by itself; ``first_cycle_bound`` is the
    safety net after which the exporter listens anyway and names what is still pending.
    """
    scheduler = Scheduler(config, config_file, bot_root)
    setup_logging(scheduler)
    listen = listen or config["exporter"]["listen"]
    server = make_server(scheduler, listen, accept=False)
    scheme = "https" if config["exporter"]["tls_cert_file"] else "http"
    stopping = threading.Event()

    def on_hup(signum: int, frame: Any) -> None:
        threading.Thread(target=scheduler.reload, name="reload", daemon=True).start()

    def on_term(signum: int, frame: Any) -> None:
        stopping.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, on_term)
    bound = first_cycle_bound(config)
    log.info("evaluating %d checks once before listening on %s (at most %g s)", len(scheduler.enabled),
             listen, bound)
    premarket: PremarketVerifier | None = None
    affinity.apply(config["exporter"]["one_cpu"])  # before the scheduler starts its threads
    try:
        scheduler.start()
        started = time.monotonic()
        pending = scheduler.pending()
        while pending and not stopping.is_set():
            left = bound - (time.monotonic() - started)
            if left <= 0:
                log.warning("the first cycle did not finish within %g s; listening anyway with %d checks "
                            "still pending: %s", bound, len(pending), ", ".join(pending))
                break
            pending = scheduler.wait_evaluated(min(left, 0.5))
        if stopping.is_set():
            return 0
        # verify before each session open, in its own thread; its outcome is exported with /metrics
        premarket = PremarketVerifier(scheduler).start()
        server.registry.register(premarket)
        freeze_startup_heap()
        # the event loop answering scrapes shares the GIL with the check workers: a thread waiting
        # for it gets it within this interval (5 ms by default), so a scrape that needs it a few
        # times is not held up by a cycle's worth of checks
        sys.setswitchinterval(SWITCH_INTERVAL)
        server.server_activate()
        host, port = server.server_address[:2]
        log.info("serving %s://%s:%s for bot root %s (%d checks, config %s)", scheme, host, port,
                 config.bot_root, len(scheduler.enabled), config.source)
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        if premarket is not None:
            premarket.stop()
        scheduler.stop()
        server.server_close()
        log.info("stopped")
    return 0


def cli_serve(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.bot_root)
    return serve(config, getattr(args, "listen", None), args.config, args.bot_root)


def main(argv: list[str] | None = None) -> int:
    """``python -m exporter.serve.server hash-password``: print a hash for exporter.basic_auth_users."""
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["hash-password"]:
        print("usage: python -m exporter.serve.server hash-password", file=sys.stderr)
        return 3
    password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if not password:
        print("error: empty password", file=sys.stderr)
        return 3
    print(hash_password(password))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
