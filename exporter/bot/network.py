"""TCP reachability of the endpoints the bot needs, with DNS bounded by the same timeout (FP-6.6)."""

from __future__ import annotations

import socket
import threading
from typing import Any
from urllib.parse import urlsplit


def endpoint(url: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    return (parts.hostname, port) if parts.hostname else None


def tcp_probe(host: str, port: int, timeout: float) -> tuple[str, str]:
    """("ok" | "dns" | "refused" | "timeout" | "unreachable", text). DNS runs in a thread because
    getaddrinfo has no timeout of its own."""
    box: dict[str, Any] = {}

    def resolve() -> None:
        try:
            box["addrs"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            box["error"] = exc

    t = threading.Thread(target=resolve, daemon=True, name=f"dns-{host}")
    t.start()
    t.join(timeout)
    if t.is_alive():
        return "dns", f"DNS lookup of {host} did not answer within {timeout:g} s"
    if "error" in box:
        return "dns", f"DNS lookup of {host} failed ({box['error']})"
    last = "no address"
    for family, kind, proto, _name, addr in box["addrs"]:
        s = socket.socket(family, kind, proto)
        s.settimeout(timeout)
        try:
            s.connect(addr)
            return "ok", f"{host}:{port} accepts connections"
        except ConnectionRefusedError:
            last = "refused"
        except TimeoutError:
            last = "timeout"
        except OSError as exc:
            last = exc.strerror or type(exc).__name__
        finally:
            s.close()
    if last == "refused":
        return "refused", f"{host}:{port} refused the connection"
    if last == "timeout":
        return "timeout", f"connecting to {host}:{port} timed out after {timeout:g} s"
    return "unreachable", f"{host}:{port} unreachable ({last})"
