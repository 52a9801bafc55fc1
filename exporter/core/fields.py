"""Small text fields that come from outside the process (HTTP headers, config values, lock and
lease files, ``systemctl`` output), read without an exception whatever they hold."""

from __future__ import annotations


def decimal(text: str | bytes, max_digits: int = 18) -> int | None:
    """``text`` as an integer when it is 1 to ``max_digits`` of the digits 0-9, else None.

    ``str.isdigit`` also takes "²" (ISO-8859-1 headers can carry it), which ``int()`` refuses, and
    ``int()`` refuses more than 4,300 digits: neither reaches it here."""
    if 0 < len(text) <= max_digits and text.isascii() and text.isdigit():
        return int(text)
    return None


def host_port(value: str) -> tuple[str, int] | None:
    """``HOST:PORT`` with a port of 0-65535 as (host, port), the brackets of an IPv6 host taken
    off and an empty host read as 127.0.0.1; None for anything else."""
    host, sep, port = value.rpartition(":")
    number = decimal(port, 5)
    if not sep or number is None or number > 65535:
        return None
    return host.strip("[]") or "127.0.0.1", number
