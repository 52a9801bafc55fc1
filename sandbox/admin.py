"""The sandbox's admin endpoint on 127.0.0.1: ``GET /faults``, ``POST|DELETE /faults/<name>``,
``POST /restart-daemon``, ``POST /restart-bot``, ``GET /state`` (what the CLI client and the
healers' actions talk to)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from . import faults as faults_mod
from .base import SandboxError


class Controlled(Protocol):
    """The running sandbox (:class:`sandbox.sandbox.Sandbox`) as the endpoint drives it."""

    active: set[str]

    def state(self) -> dict[str, Any]: ...

    def fault(self, name: str) -> faults_mod.Fault: ...

    def clear(self, name: str) -> faults_mod.Fault: ...

    def restart_daemon(self, wait: float = 15.0) -> str: ...

    def restart_bot(self) -> str: ...


def serve(sandbox: Controlled, port: int) -> ThreadingHTTPServer:
    """Start the endpoint on 127.0.0.1:``port`` (0: any free port) in a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, code: int, body: Any) -> None:
            data = json.dumps(body, indent=2).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self, method: str) -> None:
            path = self.path.split("?", 1)[0].rstrip("/")
            try:
                if method == "GET" and path == "/faults":
                    self._send(200, {"active": sorted(sandbox.active),
                                     "faults": [f.to_json() for f in faults_mod.FAULTS.values()]})
                elif method == "GET" and path in ("", "/state"):
                    self._send(200, sandbox.state())
                elif path.startswith("/faults/") and method in ("POST", "DELETE"):
                    name = path.removeprefix("/faults/")
                    if name not in faults_mod.FAULTS:
                        self._send(404, {"error": f"unknown fault {name!r}"})
                        return
                    f = sandbox.fault(name) if method == "POST" else sandbox.clear(name)
                    self._send(200, {"fault": f.to_json(), "active": sorted(sandbox.active)})
                elif method == "POST" and path == "/restart-daemon":
                    self._send(200, {"message": sandbox.restart_daemon()})
                elif method == "POST" and path == "/restart-bot":
                    self._send(200, {"message": sandbox.restart_bot()})
                else:
                    self._send(404, {"error": f"no route {method} {path or '/'}"})
            except SandboxError as exc:
                self._send(500, {"error": str(exc)})

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_DELETE(self) -> None:
            self._handle("DELETE")

    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    except OSError as exc:
        raise SandboxError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}") from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="sandbox-admin", daemon=True).start()
    return server
