"""Bot roots rebuilt from files the real stock-bot wrote (``<repo>/../shared/realbot``).

The recordings are judged at a chosen moment of the recording (``judged``), moved to "now":

* every timestamp is shifted by ``delta = now - judged`` (whole seconds), wherever it is:
  int/float epoch seconds (any number between 2017 and 2036 is a time: the recordings hold no
  price, premium, volume or id in that range), epoch milliseconds (``.cursor/debug.log``
  ``timestamp``), ISO strings with or without a zone, ``Z``, an offset such as ``-05:00`` or a
  ``" UTC"`` suffix (the format is kept: separator, fraction digits, suffix, offset), and
  date-only strings (``uw_usage_state.json`` ``date``, option ``expiry``, ...) by the number of
  calendar days the judged moment moved. Times embedded in ids (``AAPL|LONG|1796587698``,
  ``open_AAPL_2026-12-06T...``, ``300s|...``) are ids and stay as they are. Plain-text files
  (``*.log``, the lock file) get their ISO tokens shifted.
* a JSONL record written after the judged moment (its ``ts``/``_ts``/``timestamp``/``time``)
  is dropped, as it had not been written yet.
* JSON snapshot files (the cache, ``state/*.json``) exist only as the bot left them at the end
  of the recording. They are used as they are, except that a time later than the judged moment
  (not ``expires_at``, which is in the future by design) is set to the judged moment: the
  daemon re-stamps ``_metadata.last_update`` on every per-ticker write, so while it works
  through the tickers the stamp is at most seconds old, and the written-later value stands for
  "written just now". ``state/uw_usage_state.json`` is that one end snapshot too: before the end
  its ``calls_today`` (251 in ``daemon/``) is the end-of-recording count, used as it is.
* each file's mtime is the newest time it holds (the bot's own write time), at most the judged
  moment; a file without times gets the judged moment.

``.env`` (absent from the recordings) gets fake credentials and the loopback servers' URLs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sandbox.alpaca import FakeAlpaca
from sandbox.factories import make_order, make_position
from sandbox.nyse import ET
from sandbox.simserver import SimResponse

REPO = Path(__file__).resolve().parent.parent


def _main_checkout(repo: Path) -> Path:
    """The main checkout a git worktree belongs to (``.git`` is then a file naming its gitdir)."""
    dotgit = repo / ".git"
    if dotgit.is_file():
        text = dotgit.read_text().strip()
        if text.startswith("gitdir:"):
            gitdir = Path(text.split(":", 1)[1].strip())
            if gitdir.parent.name == "worktrees":
                return gitdir.parent.parent.parent
    return repo


#: ``<repo>/../shared/realbot``; from a linked worktree, the main checkout's ``../shared/realbot``
REALBOT = next((c for c in (REPO.parent / "shared" / "realbot", _main_checkout(REPO).parent / "shared" / "realbot")
                if c.is_dir()), REPO.parent / "shared" / "realbot")

EPOCH_LO, EPOCH_HI = 1.5e9, 2.1e9          # 2017-07 .. 2036-07, in seconds
EPOCH_MS_LO, EPOCH_MS_HI = 1.5e12, 2.1e12  # the same, in milliseconds
RECORD_TIME_KEYS = ("_ts", "ts", "timestamp", "time")
FUTURE_BY_DESIGN = frozenset({"expires_at"})

ISO_RE = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})(?P<sep>[T ])(?P<time>\d{2}:\d{2}:\d{2})(?:\.(?P<frac>\d{1,9}))?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2}| UTC)?")
DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")


def realbot_dir() -> Path:
    """The recordings; their absence is a broken checkout, never a reason to skip."""
    if not (REALBOT / "README.md").is_file() or not (REALBOT / "daemon").is_dir() or not (REALBOT / "main").is_dir():
        raise AssertionError(
            f"the real bot's recorded files are missing: expected {REALBOT} (<repo>/../shared/realbot, for a "
            f"worktree also <main checkout>/../shared/realbot) with "
            "README.md, daemon/ and main/; the conformance tests cannot run without them")
    return REALBOT


@dataclass(frozen=True)
class Moment:
    """A recording judged at ``judged`` (epoch seconds of the recording)."""

    name: str
    root: str
    judged: float
    about: str


#: daemon/: before the UW 429 period (429s from 1796588725 to 1796588782)
DAEMON_BEFORE_429 = Moment("daemon-before-429", "daemon", 1796588700.0, "daemon only, cycle 1 done, no 429 yet")
#: daemon/: inside the 429 period; what was written after it is dropped
DAEMON_DURING_429 = Moment("daemon-during-429", "daemon", 1796588760.0, "daemon only, UW answering 429")
#: main/: the last logs/run.jsonl line (main.py's third cycle)
MAIN_END = Moment("main-end", "main", 1796587828.889763, "daemon + main.py, orders refused")
MOMENTS = (DAEMON_BEFORE_429, DAEMON_DURING_429, MAIN_END)


# --- the shift --------------------------------------------------------------------------------
class Shifter:
    def __init__(self, judged: float, now: float) -> None:
        self.judged = judged
        self.delta = int(round(now - judged))
        self.now = judged + self.delta
        judged_dt = datetime.fromtimestamp(judged, UTC)
        self.days = (judged_dt + timedelta(seconds=self.delta)).date() - judged_dt.date()

    # values
    def number(self, v: int | float, clamp: bool) -> int | float:
        if EPOCH_LO <= v <= EPOCH_HI:
            t = min(v, self.judged) if clamp else v
            return type(v)(t + self.delta) if isinstance(v, int) else t + self.delta
        if EPOCH_MS_LO <= v <= EPOCH_MS_HI:
            t = min(v, self.judged * 1000) if clamp else v
            return type(v)(t + self.delta * 1000)
        return v

    def iso(self, m: re.Match[str], clamp: bool) -> str:
        zone = m["zone"]
        frac = m["frac"] or ""
        text = f"{m['date']}T{m['time']}" + (f".{frac[:6].ljust(6, '0')}" if frac else "")
        if zone in (None, "Z", " UTC"):
            dt = datetime.fromisoformat(text).replace(tzinfo=UTC)
        else:
            dt = datetime.fromisoformat(text + zone)
        if clamp and dt.timestamp() > self.judged:
            dt = datetime.fromtimestamp(self.judged, UTC).astimezone(dt.tzinfo)
        dt = dt + timedelta(seconds=self.delta)
        out = dt.strftime(f"%Y-%m-%d{m['sep']}%H:%M:%S")
        if frac:
            out += "." + f"{dt.microsecond:06d}"[: len(frac)].ljust(len(frac), "0")
        return out + (zone or "")

    def string(self, s: str, clamp: bool) -> str:
        m = ISO_RE.fullmatch(s)
        if m:
            return self.iso(m, clamp)
        if DATE_RE.fullmatch(s):
            try:
                return (date.fromisoformat(s) + self.days).isoformat()
            except ValueError:
                return s
        return s

    def text(self, s: str) -> str:
        return ISO_RE.sub(lambda m: self.iso(m, False), s)

    def value(self, v: Any, clamp: bool, key: str | None = None) -> Any:
        if isinstance(v, dict):
            return {k: self.value(x, clamp, k) for k, x in v.items()}
        if isinstance(v, list):
            return [self.value(x, clamp, key) for x in v]
        clamp = clamp and key not in FUTURE_BY_DESIGN
        if isinstance(v, bool) or v is None:
            return v
        if isinstance(v, int | float):
            return self.number(v, clamp)
        if isinstance(v, str):
            return self.string(v, clamp)
        return v


def record_time(rec: Any) -> float | None:
    """When a log record was written (epoch seconds of the recording), from its own time field."""
    if not isinstance(rec, dict):
        return None
    for key in RECORD_TIME_KEYS:
        v = rec.get(key)
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, int | float):
            if EPOCH_LO <= v <= EPOCH_HI:
                return float(v)
            if EPOCH_MS_LO <= v <= EPOCH_MS_HI:
                return v / 1000.0
        if isinstance(v, str):
            m = ISO_RE.fullmatch(v)
            if m:
                zone = m["zone"]
                text = f"{m['date']}T{m['time']}" + (f".{m['frac'][:6]}" if m["frac"] else "")
                tz = "+00:00" if zone in (None, "Z", " UTC") else zone
                return datetime.fromisoformat(text + tz).timestamp()
    return None


def _times(v: Any, out: list[float]) -> None:
    if isinstance(v, dict):
        for k, x in v.items():
            if k not in FUTURE_BY_DESIGN:
                _times(x, out)
    elif isinstance(v, list):
        for x in v:
            _times(x, out)
    elif isinstance(v, int | float) and not isinstance(v, bool):
        if EPOCH_LO <= v <= EPOCH_HI:
            out.append(float(v))
        elif EPOCH_MS_LO <= v <= EPOCH_MS_HI:
            out.append(v / 1000.0)
    elif isinstance(v, str):
        t = record_time({"ts": v})
        if t is not None:
            out.append(t)


def _dump_like(original: str, data: Any) -> str:
    """Re-serialise as the bot wrote it: ``indent=2`` files stay indented."""
    indent = 2 if original.lstrip().startswith(("{\n", "[\n")) else None
    return json.dumps(data, indent=indent) + ("\n" if original.endswith("\n") else "")


@dataclass
class ShiftStats:
    files: int = 0
    dropped_lines: int = 0


def shift_tree(dest: Path, sh: Shifter) -> ShiftStats:
    """Shift, trim and re-stamp every file under ``dest`` in place."""
    stats = ShiftStats()
    for path in sorted(p for p in dest.rglob("*") if p.is_file()):
        stats.files += 1
        text = path.read_text(encoding="utf-8")
        newest: list[float] = []
        if path.suffix == ".jsonl" or path.name == "debug.log":
            lines_out = []
            for line in text.splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    lines_out.append(sh.text(line))
                    continue
                t = record_time(rec)
                if t is not None and t > sh.judged:
                    stats.dropped_lines += 1
                    continue
                if t is not None:
                    newest.append(t)
                lines_out.append(json.dumps(sh.value(rec, clamp=False)))
            new_text = "".join(ln + "\n" for ln in lines_out)
        elif path.suffix == ".json":
            try:
                data = json.loads(text)
            except ValueError:
                new_text = sh.text(text)
            else:
                clamped = sh.value(data, clamp=True)
                new_text = _dump_like(text, clamped)
                # times as the file now holds them, back on the recording's axis
                _times(clamped, newest)
                newest = [t - sh.delta for t in newest]
        else:
            new_text = sh.text(text)
            for m in ISO_RE.finditer(text):
                t = record_time({"ts": m.group(0)})
                if t is not None and t <= sh.judged:
                    newest.append(t)
        path.chmod(0o644)
        path.write_text(new_text, encoding="utf-8")
        written = max([t for t in newest if t <= sh.judged] or [sh.judged])
        os.utime(path, (written + sh.delta, written + sh.delta))
    return stats


def build_root(moment: Moment, dest: Path, now: float, alpaca_url: str, uw_url: str) -> tuple[Path, Shifter]:
    """Copy the recording ``moment.root`` to ``dest``, shifted so ``moment.judged`` is ``now``."""
    src = realbot_dir() / moment.root
    shutil.copytree(src, dest)
    for d in [dest, *(p for p in dest.rglob("*") if p.is_dir())]:
        d.chmod(0o755)
    sh = Shifter(moment.judged, now)
    shift_tree(dest, sh)
    env = {"ALPACA_KEY": "PKTEST", "ALPACA_SECRET": "SECRETTEST", "ALPACA_BASE_URL": alpaca_url,
           "UW_API_KEY": "uw-test-token", "UW_BASE_URL": uw_url, "TRADING_MODE": "PAPER"}
    (dest / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    os.utime(dest / ".env", (sh.now, sh.now))
    return dest, sh


# --- the broker as the recording saw it ---------------------------------------------------------
REFUSAL = {"code": 40310000, "message": "orders refused by test server"}


class RecordedAlpaca(FakeAlpaca):
    """The recording's broker: three positions, every order refused with 403 (nothing is listed)."""

    def __init__(self) -> None:
        super().__init__()
        now = datetime.now(UTC)
        self.positions = [make_position(s, 10, 100.0, current_price=101.0) for s in ("AAPL", "MSFT", "NVDA")]
        self.orders = [make_order(s, 10, "buy", status="filled", submitted_at=now - timedelta(days=2, minutes=i),
                                  filled_avg_price=100.0) for i, s in enumerate(("AAPL", "MSFT", "NVDA"))]

    def _post_order(self, query: dict[str, str], body: bytes) -> SimResponse:
        try:
            payload = json.loads(body)
        except ValueError:
            payload = {"raw": body.decode(errors="replace")}
        with self.lock:
            self.submitted_orders.append(payload)
        return SimResponse.of_json(403, REFUSAL)


def force_open(alpaca: FakeAlpaca, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
    """The recording forced the market open: the broker's clock says open now, and today (New York)
    is a trading day whose session spans the whole day, so every recorded cycle is in session."""
    t = now()
    today = t.astimezone(ET).date()
    alpaca.rate_limit = 1_000_000
    alpaca.calendar = [{"date": (today + timedelta(days=k)).isoformat(), "open": "00:00", "close": "23:59",
                        "session_open": "0000", "session_close": "2359"} for k in (-1, 0, 1)]
    alpaca.clock = {"is_open": True, "next_open": (t + timedelta(hours=20)).isoformat(),
                    "next_close": (t + timedelta(hours=3)).isoformat()}
