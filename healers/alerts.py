"""The Alertmanager webhook payload (version 4), parsed strictly: a malformed body is a 400, never
a guess, and no label value goes further than a dictionary lookup."""

from __future__ import annotations

import functools
import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)")

#: a v4 payload of a few hundred alerts is well under this; anything bigger is not Alertmanager
MAX_BODY_BYTES = 1024 * 1024


MAX_ALERTS = 1000


class BadRequest(ValueError):
    """The body is not an Alertmanager v4 payload; the message names what is wrong."""


class Alert(msgspec.Struct, frozen=True, array_like=True):
    """One alert of a delivery, as deciding needs it (and as the journal keeps it: an array)."""

    status: str
    fp: str | None
    fingerprint: str
    starts_at: str
    #: of the alert's labels only those named in healer.match_labels, sorted: only ever compared
    #: with it (never used as data, never journaled beyond what the comparison needs)
    labels: tuple[tuple[str, str], ...] = ()


def _str_map(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise BadRequest(f"{where} must be an object of strings")
    return value


@functools.lru_cache(maxsize=4096)  # one firing is delivered again and again with the same startsAt
def canonical_time(value: str) -> str:
    """startsAt as a UTC instant in milliseconds, so one alert is one dedupe key however it is spelled.

    Alertmanager's webhook writes nanoseconds and often a local offset, its v2 API milliseconds
    in UTC; a string compare would treat the same firing as a new one and heal it again. A value
    that is not RFC 3339 is kept (bounded) and only ever compared, never parsed further.
    """
    m = _RFC3339.fullmatch(value.strip())
    if m is None:
        return value[:64]
    try:
        dt = datetime.fromisoformat(f"{m[1]}.{(m[2] or '0')[:6].ljust(6, '0')}{'+00:00' if m[3] == 'Z' else m[3]}")
        return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except (ValueError, OverflowError):  # month 13, or an offset that leaves year 1
        return value[:64]


# Alertmanager's fields, all of them: an unknown field is not skipped unchecked (msgspec would not
# validate its text) but sends the body down the field-by-field path, as does anything unusual.
class _AlertIn(msgspec.Struct, forbid_unknown_fields=True):
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = {}
    startsAt: str = ""  # noqa: N815  (the payload's own names)
    endsAt: str = ""  # noqa: N815
    fingerprint: str = ""
    generatorURL: str = ""  # noqa: N815


class Payload(msgspec.Struct, forbid_unknown_fields=True):
    """A webhook body as ``check_payload`` accepted it. Every field has the type Alertmanager
    writes, so nothing in an accepted body nests deeper than an alert's labels: a body with
    anything else (a null, a nested value) goes to the field-by-field check, and no accepted
    body comes near a decoder's nesting limit (the journal's replay checks it again)."""

    # what check_payload requires is in the types, checked by the decoder as it reads
    version: Literal["4"]
    status: Literal["firing", "resolved"]
    alerts: Annotated[list[_AlertIn], msgspec.Meta(max_length=MAX_ALERTS)]
    groupKey: str = ""  # noqa: N815  (the payload's own names)
    truncatedAlerts: int = 0  # noqa: N815
    receiver: str = ""
    groupLabels: dict[str, str] = {}  # noqa: N815
    commonLabels: dict[str, str] = {}  # noqa: N815
    commonAnnotations: dict[str, str] = {}  # noqa: N815
    externalURL: str = ""  # noqa: N815


_fast_decoder = msgspec.json.Decoder(Payload)


def check_payload(body: bytes) -> Payload | None:
    """A well-formed payload as Alertmanager writes it, decoded and type-checked in one pass
    (msgspec, in C); None for anything else, which ``parse_payload`` then checks field by field
    (to name what is wrong, or to accept an unusual but valid body). What it accepts, that check
    accepts with the same alerts."""
    try:
        return _fast_decoder.decode(body)
    except (msgspec.DecodeError, ValueError, RecursionError):  # a ValidationError is a DecodeError
        return None


def payload_alerts(data: Payload, keep: frozenset[str] = frozenset()) -> tuple[list[Alert], str]:
    """A checked payload's alerts (each with the labels named in ``keep``) and the sending
    Alertmanager's externalURL."""
    out = [Alert(a.status, a.labels.get("fp"),
                 (a.fingerprint or json.dumps(sorted(a.labels.items())))[:128], canonical_time(a.startsAt),
                 _kept(a.labels, keep)) for a in data.alerts]
    return out, payload_source(data)


def payload_source(data: Payload) -> str:
    """The sending Alertmanager's externalURL, as a delivery keeps it."""
    return data.externalURL[:100]


def parse_payload(body: bytes, keep: frozenset[str] = frozenset()) -> tuple[list[Alert], str]:
    """Validate a webhook v4 body and return its alerts (each with the labels named in ``keep``)
    and the sending Alertmanager's externalURL; BadRequest for anything else."""
    data = check_payload(body)
    return payload_alerts(data, keep) if data is not None else _parse_checked(body, keep)


def _kept(labels: dict[str, str], keep: frozenset[str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in labels.items() if k in keep)) if keep else ()


def _parse_checked(body: bytes, keep: frozenset[str] = frozenset()) -> tuple[list[Alert], str]:
    """``parse_payload`` field by field: the message of its BadRequest names what is wrong."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest("body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    if data.get("version") != "4":
        raise BadRequest(f"unsupported payload version {str(data.get('version'))[:20]!r} (expected \"4\")")
    if data.get("status") not in ("firing", "resolved"):
        raise BadRequest("'status' must be \"firing\" or \"resolved\"")
    raw = data.get("alerts")
    if not isinstance(raw, list):
        raise BadRequest("'alerts' must be a list")
    if len(raw) > MAX_ALERTS:
        raise BadRequest(f"more than {MAX_ALERTS} alerts in one payload")
    for key in ("groupLabels", "commonLabels", "commonAnnotations"):
        if key in data:
            _str_map(data[key], f"'{key}'")
    out: list[Alert] = []
    for i, a in enumerate(raw):
        where = f"alerts[{i}]"
        if not isinstance(a, dict):
            raise BadRequest(f"{where} must be an object")
        status = a.get("status")
        if status not in ("firing", "resolved"):
            raise BadRequest(f"{where}.status must be \"firing\" or \"resolved\"")
        labels = _str_map(a.get("labels"), f"{where}.labels")
        if "annotations" in a:
            _str_map(a["annotations"], f"{where}.annotations")
        for key in ("startsAt", "endsAt", "fingerprint", "generatorURL"):
            if key in a and not isinstance(a[key], str):
                raise BadRequest(f"{where}.{key} must be a string")
        fingerprint = a.get("fingerprint") or json.dumps(sorted(labels.items()))
        out.append(Alert(status, labels.get("fp"), fingerprint[:128], canonical_time(a.get("startsAt", "")),
                         _kept(labels, keep)))
    url = data.get("externalURL")
    return out, url[:100] if isinstance(url, str) else ""
