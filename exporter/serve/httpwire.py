"""The HTTP/1.1 messages of the bounded server (``exporter.serve.httpd``): what a handler is given
and returns, how a request head is parsed and an answer written on the wire."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import urlsplit


@dataclass
class Request:
    method: str
    target: str
    path: str
    query: str
    #: header names lower-cased; values decoded as ISO-8859-1 (what HTTP/1.1 allows on the wire)
    headers: dict[str, str]
    body: bytes = b""
    #: answers this request from any thread, once (set by the server before any handler runs); a
    #: handler or ``inline`` that returns LATER promises to call it
    reply: Callable[[Response], None] | None = None


class OnPool:
    """What a precheck run on the event loop returns to be run again on the pool (it would block)."""


ON_POOL = OnPool()


class Later:
    """What ``inline`` returns when it will answer through ``Request.reply``."""


LATER = Later()


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    #: close the connection after this answer (e.g. an unread body is still on the wire)
    close: bool = False


Handler = Callable[[Request], "Response | Future[Response] | Later"]
Precheck = Callable[[Request], "Response | OnPool | None"]


def parse_head(head: bytes) -> tuple[Request | None, str]:
    try:
        text = head.decode("iso-8859-1")
        lines = text.split("\r\n")
        method, target, version = lines[0].split(" ")
        if not version.startswith("HTTP/1."):
            return None, ""
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                return None, ""
            name = name.lower()
            if name in headers and name in ("content-length", "authorization"):
                return None, ""  # two lengths or two credentials: a smuggling attempt, not a client
            headers[name] = value.strip()
        if target[:1] == "/" and target[1:2] != "/" and "?" not in target and "#" not in target:  # a bare path
            return Request(method, target, target, "", headers), version
        url = urlsplit(target)
        return Request(method, target, url.path, url.query, headers), version
    except ValueError:
        return None, ""


_REASONS = {int(s): s.phrase for s in HTTPStatus}


#: (status, content type, keep-alive) -> the head of an answer without extra headers, up to its
#: Content-Length value; and what follows the value
_HEADS: dict[tuple[int, str, bool], tuple[bytes, bytes]] = {}


def encode_response(resp: Response, keep_alive: bool, head_only: bool = False) -> bytes:
    body = b"" if head_only else resp.body
    if not resp.headers:  # most answers: the head is the same bytes but for the length
        key = (resp.status, resp.content_type, keep_alive)
        parts = _HEADS.get(key)
        if parts is None:
            head = _head(resp, keep_alive)
            cut = head.index(b"Content-Length: ") + len(b"Content-Length: ")
            parts = (head[:cut], head[head.index(b"\r\n", cut):])
            if len(_HEADS) < 256:
                _HEADS[key] = parts
        return b"%b%d%b%b" % (parts[0], len(resp.body), parts[1], body)
    return _head(resp, keep_alive) + body


def _head(resp: Response, keep_alive: bool) -> bytes:
    reason = _REASONS.get(resp.status, "")
    lines = [f"HTTP/1.1 {resp.status} {reason}", f"Content-Type: {resp.content_type}",
             f"Content-Length: {len(resp.body)}"]
    lines += [f"{k}: {v}" for k, v in resp.headers.items()]
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("iso-8859-1")
