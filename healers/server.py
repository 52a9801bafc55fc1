"""`trading-readiness heal`: the receiver's bounded HTTP side (``POST /alertmanager``, ``/metrics``,
``/api/heals``) and its command line."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import sys
import threading
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from exporter.core.config import load as load_config
from exporter.core.fields import decimal, host_port
from exporter.serve.httpconn import MAX_HEADERS, Connection
from exporter.serve.httpd import LATER, MAX_HEAD_BYTES, SWITCH_INTERVAL, BoundedHTTPServer, Later, Request, Response
from healers.alerts import MAX_BODY_BYTES
from healers.lease import Lease
from healers.receiver import Healer

TOKEN_ENV = "TRADING_READINESS_HEALER_TOKEN"  # noqa: S105  (a variable name, not a secret)


EXIT_USAGE = 3


#: the webhook token's floor: long enough not to be guessed, varied enough that it cannot be a
#: word, a number or a piece of every JSON line (a token "1" would be redacted out of every number)
MIN_TOKEN_LENGTH = 16


MIN_TOKEN_DISTINCT = 8


def token_problem(token: str) -> str | None:
    """Why a webhook token is refused, or None; never quotes the token."""
    n, distinct = len(token), len(set(token))
    if n < MIN_TOKEN_LENGTH:
        return f"is {n} character{'' if n == 1 else 's'} long; it must have at least {MIN_TOKEN_LENGTH}"
    if distinct < MIN_TOKEN_DISTINCT:
        return (f"has {distinct} distinct character{'' if distinct == 1 else 's'}; it must have at least "
                f"{MIN_TOKEN_DISTINCT} (e.g. openssl rand -hex 32)")
    return None


#: HTTP handler threads: a request validates its body and waits for the journal's shared fsync,
#: so a handful keep one fsync's worth of deliveries in flight each time
HTTP_WORKERS = 8


#: a delivery body up to this size is validated on the event loop (a few alerts parse in well
#: under a millisecond); a larger one is parsed on the pool, so it cannot stall other connections
INLINE_BODY_BYTES = 32 * 1024


#: open connections at most; idle ones give way to new clients beyond this
MAX_CONNECTIONS = 512


#: a slow or stalled client holds its connection for at most this long per request
READ_TIMEOUT = 10.0


#: the body of the answer to an accepted delivery, byte for byte what json.dumps writes
_QUEUED_BODY = b'{"delivery": %d, "alerts": %d, "state": "queued"}\n'


def _queued(obj: Any) -> bytes | None:
    """The body of the answer to an accepted delivery, without json.dumps; None for any other answer."""
    if isinstance(obj, dict) and len(obj) == 3 and obj.get("state") == "queued":
        return _QUEUED_BODY % (obj["delivery"], obj["alerts"])
    return None


def _json(status: int, obj: Any, close: bool = False) -> Response:
    if status == 200 and (body := _queued(obj)) is not None:
        return Response(200, body, "application/json")
    return Response(status, (json.dumps(obj) + "\n").encode(), "application/json", close=close)


#: the request line of a delivery: the only request the short path takes
DELIVERY_LINE = b"POST /alertmanager HTTP/1.1\r\n"


#: headers the short path leaves to the general parser: what it would have to interpret, and a
#: second Content-Length or Authorization (which the general parser refuses)
_GENERAL_PATH_HEADERS = frozenset({b"transfer-encoding", b"connection", b"expect", b"content-length",
                                   b"authorization"})


#: Content-Length as Alertmanager (Go's net/http) writes it: a head equal, but for this header's
#: value, to one that passed the short path's check is taken without checking its lines again
_CONTENT_LENGTH = b"\r\nContent-Length: "


#: such heads remembered (an Alertmanager writes the same head for every delivery; only heads
#: with the right token are kept)
MAX_PLAIN_HEADS = 64


#: an accepted delivery's answer up to its Content-Length value, as encode_response writes it
_QUEUED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "


class WebhookConnection(Connection):
    """A client connection of the receiver. A delivery that arrives whole in one read with a plain
    head (``POST /alertmanager HTTP/1.1``, one Content-Length, the right bearer token, nothing else
    the general parser would have to interpret) is validated and journaled straight from the read,
    without a Request, a precheck or a handler call in between: under a burst that takes about a
    third off the event loop's time per delivery. A head that is, but for its Content-Length value,
    one that already passed this check (an Alertmanager sends the same head every time) is not
    read line by line again. Anything else, every refusal included, takes the general path, so
    both answer every request alike (``tests/test_healer_http.py``)."""

    server: HealerServer

    def __init__(self, server: HealerServer, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(server, loop)
        self.healer = server.healer
        self.told = self._told  # given to every delivery it takes (one bound method, not one per delivery)

    def shortcut(self, data: bytes) -> bool:
        if not data.startswith(DELIVERY_LINE):
            return False
        end = data.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES)
        if end < 0:
            return False
        length: int | None = None
        rest = b""
        heads = self.server.plain_heads
        at = data.find(_CONTENT_LENGTH, 0, end)
        if at >= 0:
            value_at = at + len(_CONTENT_LENGTH)
            stop = data.find(b"\r\n", value_at, end + 2)
            rest = data[:at] + data[stop:end]  # the head without its Content-Length line
            if rest in heads:
                length = decimal(data[value_at:stop])
        if length is None:
            length = self._plain_length(data, end)
            if length is None:
                return False
            if at >= 0 and len(heads) < MAX_PLAIN_HEADS:
                heads.add(rest)
        if length > INLINE_BODY_BYTES or len(data) != end + 4 + length:
            return False
        self.taken(keep_alive=True)
        self.server.short_path_taken += 1
        try:
            answer = self.healer.accept(data[end + 4:], self._answer, self.told)
        except Exception as exc:  # our own fault: 5xx (Alertmanager retries), and the receiver keeps serving
            self.healer._log_error(f"internal error handling a delivery: {type(exc).__name__}: {exc}")
            answer = 500, {"error": "internal error"}
        if answer is not None:
            self._answer(*answer)
        return True

    def _plain_length(self, data: bytes, end: int) -> int | None:
        """The Content-Length of a plain head ending at ``end`` that carries the right token; None
        for any other head (the general path's to answer)."""
        if data.count(b"\r\n", 0, end) > MAX_HEADERS:
            return None
        raw_length: bytes | None = None
        auth: bytes | None = None
        for line in data[len(DELIVERY_LINE):end].split(b"\r\n"):
            name, sep, value = line.partition(b":")
            name = name.lower()
            if name == b"content-length" and raw_length is None:
                raw_length = value.strip()
            elif name == b"authorization" and auth is None:
                auth = value.strip()
            elif not sep or not name or name != name.strip() or name in _GENERAL_PATH_HEADERS:
                return None
        length = None if raw_length is None else decimal(raw_length)
        # the header as the general path reads it (ISO-8859-1); anything not ASCII is left to it
        if length is None or not self.healer.authorized(
                auth.decode("ascii") if auth is not None and auth.isascii() else None):
            return None  # the general path answers 400 or 401
        return length

    def _answer(self, status: int, obj: dict[str, Any]) -> None:
        if status == 200 and (body := _queued(obj)) is not None:
            self._answer_queued(body)
        else:
            self.reply(_json(status, obj))

    def _told(self, seq: int, alerts: int, failed: OSError | None) -> None:
        """The delivery this connection took is on disk: its answer written straight from the
        journal's callback, the bytes ``_answer`` writes for it; a failure goes the usual way."""
        if failed is not None:
            self.healer.journaled(self._answer, seq, alerts, failed)
            return
        self._answer_queued(_QUEUED_BODY % (seq, alerts))

    def _answer_queued(self, body: bytes) -> None:
        """An accepted delivery's answer, as encode_response writes it, around ``body``."""
        self.answer_raw(b"%b%d\r\n\r\n%b" % (_QUEUED_HEAD, len(body), body))


class HealerServer(BoundedHTTPServer):
    """The receiver's HTTP side: an asyncio acceptor (token and length are checked from the
    request head, before any body is read) and a small fixed pool that validates, journals and
    answers; the decisions are the dispatcher's."""

    def __init__(self, addr: tuple[str, int], healer: Healer, short_path: bool = True) -> None:
        self.healer = healer
        #: deliveries taken on WebhookConnection's short path (``short_path=False``: none; every
        #: request then takes the general path, as the tests that compare the two do)
        self.short_path_taken = 0
        #: delivery heads without their Content-Length line that passed the short path's check
        #: (only the event loop's thread reads or adds them)
        self.plain_heads: set[bytes] = set()
        super().__init__(addr, self._handle, precheck=self._precheck, precheck_on_loop=True, inline=self._inline,
                         workers=HTTP_WORKERS,
                         max_body=MAX_BODY_BYTES, read_timeout=READ_TIMEOUT, max_connections=MAX_CONNECTIONS,
                         name="heal-http", connection=WebhookConnection if short_path else Connection)
        # a synced batch of deliveries is answered by the event loop in one hand-off
        healer.journal.completer = self.call_soon
        # and what the event loop journals in one turn is written and synced together, by the loop
        healer.journal.batcher = self.call_soon

    def _precheck(self, req: Request) -> Response | None:
        if req.method != "POST":
            return None
        if req.path != "/alertmanager":
            return _json(404, {"error": "not found"})
        if not self.healer.authorized(req.headers.get("authorization")):
            return _json(401, {"error": "missing or wrong bearer token"}, close=True)
        length = decimal(req.headers.get("content-length", "").strip())
        if length is None:
            return _json(400, {"error": "Content-Length is required"}, close=True)
        if length > MAX_BODY_BYTES:
            return _json(413, {"error": f"body larger than {MAX_BODY_BYTES} bytes"}, close=True)
        return None

    def _inline(self, req: Request) -> Response | Later | None:
        """A delivery of ordinary size is validated and handed to the journal on the event loop
        (a JSON parse and an append to a list: no disk, no lock held for long); a large one, and
        everything else, goes to the pool."""
        if req.method == "POST" and len(req.body) <= INLINE_BODY_BYTES:
            return self._handle(req)
        return None

    def _handle(self, req: Request) -> Response | Later:
        healer = self.healer
        if req.method == "POST":
            respond = req.reply
            assert respond is not None  # the server sets it on every request
            try:
                # the connection waits for the journal's fsync and is answered from its completion
                # on the event loop; no handler thread waits, no future is made
                answer = healer.handle_post(req.headers.get("authorization"), req.body,
                                            lambda status, obj: respond(_json(status, obj)))
            except Exception as exc:  # our own fault: 5xx (Alertmanager retries), and the receiver keeps serving
                healer._log_error(f"internal error handling a delivery: {type(exc).__name__}: {exc}")
                return _json(500, {"error": "internal error"})
            return LATER if answer is None else _json(*answer)
        if req.method not in ("GET", "HEAD"):
            return _json(405, {"error": "method not allowed"})
        if req.path == "/metrics":
            healer.refresh()
            return Response(200, generate_latest(healer.registry), CONTENT_TYPE_LATEST)
        if req.path == "/api/heals":
            query = parse_qs(req.query)
            try:
                limit = int(query.get("limit", ["50"])[0])
                seq = int(query["delivery"][0]) if "delivery" in query else None
            except ValueError:
                return _json(400, {"error": "limit and delivery must be integers"})
            if seq is not None:
                found = healer.delivery_views(seq)
                return _json(200, found[0]) if found else _json(404, {"error": f"no recent delivery {seq}"})
            return _json(200, {"heals": healer.heals(limit), "dry_run": healer.dry_run,
                               "deliveries": healer.delivery_views(), "backlog": healer.journal.pending_alerts,
                               "state": healer.policy.snapshot(), "deliveries_by_alertmanager": dict(healer.sources),
                               "owner": healer.owner, "lease": healer.lease_view()})
        if req.path == "/-/healthy":
            return Response(200, b"OK\n", "text/plain")
        return _json(404, {"error": "not found"})


def parse_listen(value: str) -> tuple[str, int]:
    addr = host_port(value)
    if addr is None:
        raise ValueError(f"--listen must be HOST:PORT, got {value!r}")
    return addr


def cli_heal(args: argparse.Namespace) -> int:
    """Run the receiver until SIGTERM/SIGINT. Exit 3 for a usage or start-up problem."""
    config = load_config(args.config, args.bot_root)
    token = os.environ.get(TOKEN_ENV, "").strip() or None
    if token is None and not args.insecure_no_auth:
        print(f"error: {TOKEN_ENV} is not set; refusing to run healers for unauthenticated webhooks "
              "(set it, or pass --insecure-no-auth)", file=sys.stderr)
        return EXIT_USAGE
    problem = token_problem(token) if token is not None else None
    if problem is not None:
        print(f"error: {TOKEN_ENV} {problem}; refusing to start", file=sys.stderr)
        return EXIT_USAGE
    try:
        host, port = parse_listen(args.listen or config["healer"]["listen"])
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    lease_path = config.resolve(config["healer"]["lease_file"])
    try:
        # without the lease a second receiver of this bot could run the same action beside it
        Lease(lease_path, "start-up check").entries()
    except OSError as exc:
        print(f"error: cannot use the heal lease file {lease_path} (key 'healer.lease_file'): "
              f"{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    audit_path = config.resolve(config["healer"]["audit_file"])
    what = f"the heal audit file {audit_path}"
    try:
        # without its audit the receiver forgets what it did and would heal twice after a restart
        audit_path.parent.mkdir(parents=True, exist_ok=True)
        with audit_path.open("ab"):
            pass
        # and without its journal it could lose a delivery it acknowledged
        what = f"the heal journal next to {audit_path}"
        healer = Healer(config, None if args.insecure_no_auth and token is None else token, dry_run=args.dry_run)
    except OSError as exc:
        print(f"error: cannot use {what} (key 'healer.audit_file'): {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        server = HealerServer((host, port), healer)
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        healer.stop()
        return EXIT_USAGE
    enabled = sorted(fp for fp, s in healer.specs.items() if s.enabled)
    if healer.token is None:
        healer.log(f"WARNING: authentication is OFF (--insecure-no-auth): any process that can reach "
                   f"{host}:{server.server_address[1]} can make this healer run its actions; set {TOKEN_ENV} instead")
    healer.log(f"healer listening on http://{host}:{server.server_address[1]} "
               f"(healers for {', '.join(enabled) or 'nothing'}; dry run: {'yes' if healer.dry_run else 'no'}; "
               f"auth: {'bearer token' if healer.token else 'NONE (--insecure-no-auth)'}; "
               f"audit: {healer.audit.path})")

    def _stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # what start-up built (config, catalog, metrics, imported modules) lives as long as the process:
    # kept out of the collector's full passes, which would otherwise walk it during a burst of deliveries
    gc.collect()
    gc.freeze()
    # and no automatic collection: one set off in the middle of a burst stalls every answer still
    # to be written (0.1-0.6 ms a young pass, 3.7 ms a middle one, measured here); the receiver
    # collects between bursts instead (Logbook.collect_garbage)
    gc.disable()
    # the event loop answering deliveries shares the GIL with the flusher and the dispatcher: a
    # thread waiting for it gets it within this interval (5 ms by default)
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        healer.stop()
        server.server_close()
    return 0
