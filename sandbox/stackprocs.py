"""The stack's processes and its webhook sink: each server a child process in its own process
group (:class:`Proc`), the pager/ticket/heartbeat receivers one in-process HTTP server
(:class:`Sink`), and where a server's binary and a free loopback port are found."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class StackError(Exception):
    """A component could not start (missing binary, port, bad config): one line for the operator."""


def free_port() -> int:
    """A port free on 127.0.0.1 right now (the kernel picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_binary(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if path:
            return path
    return None


@dataclass
class Proc:
    """One child process in its own process group, output to ``log``."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab")  # noqa: SIM115 - the child owns it after Popen
        try:
            self.popen = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            raise StackError(f"cannot start {self.name} ({self.argv[0]}): {exc.strerror or exc}") from None
        finally:
            out.close()
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float = 5.0) -> None:
        p = self.popen
        if p is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)  # whatever it started in its group, too
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)


class Sink:
    """The pager/ticket/heartbeat webhook receivers: records every Alertmanager notification."""

    def __init__(self) -> None:
        self.received: list[tuple[str, float, dict[str, Any]]] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:  # noqa: N802
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                except ValueError:
                    body = {}
                with sink._lock:
                    sink.received.append((self.path, time.time(), body if isinstance(body, dict) else {}))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="webhook-sink", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def alerts(self, path: str) -> list[dict[str, Any]]:
        """Every alert delivered to ``path`` (``/pager``, ``/ticket``, ``/heartbeat``)."""
        with self._lock:
            return [a for p, _, body in self.received if p == path for a in body.get("alerts", [])]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
