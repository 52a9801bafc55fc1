"""Unusual Whales over requests, bounded and quota-aware.

Every UW request costs daily quota, so callers probe rarely; this client never retries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests

from .broker import BoundedSession


class UWError(Exception):
    """kind: auth, rate_limit, server, timeout, connection, bad_response, client, unconfigured."""

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        self.kind, self.status = kind, status
        super().__init__(message)


@dataclass
class UWResponse:
    status: int
    data: Any
    headers: dict[str, str]


@dataclass
class UWClient:
    base_url: str
    token: str | None
    timeout: float = 5.0

    def __post_init__(self) -> None:
        self._session = BoundedSession(self.timeout, self.base_url)  # a total deadline, not per read

    def get(self, path: str, params: dict[str, Any] | None = None) -> UWResponse:
        if not self.token:
            raise UWError("unconfigured", "UW_API_KEY is not set")
        url = self.base_url.rstrip("/") + path
        try:
            r = self._session.get(url, params=params, timeout=self.timeout,
                                  headers={"Authorization": f"Bearer {self.token}", "Accept": "application/json"})
        except requests.Timeout:
            raise UWError("timeout", f"UW did not answer {path} within {self.timeout:g} s") from None
        except requests.ConnectionError:
            raise UWError("connection", f"cannot connect to UW at {self.base_url}") from None
        except requests.RequestException as exc:
            raise UWError("connection", f"UW request failed ({type(exc).__name__})") from None
        headers = {k.lower(): v for k, v in r.headers.items() if k.lower().startswith("x-")}
        if r.status_code in (401, 403):
            raise UWError("auth", f"UW rejected the token (HTTP {r.status_code})", r.status_code)
        if r.status_code == 429:
            raise UWError("rate_limit", "UW rate limit or daily quota exceeded (HTTP 429)", 429)
        if r.status_code >= 500:
            raise UWError("server", f"UW server error (HTTP {r.status_code})", r.status_code)
        if r.status_code >= 400:
            raise UWError("client", f"UW refused the request (HTTP {r.status_code})", r.status_code)
        try:
            body = r.json()
        except ValueError:
            raise UWError("bad_response", f"UW answered {path} with a body that is not JSON", r.status_code) from None
        return UWResponse(r.status_code, body, headers)
