"""Prometheus rules and the example Alertmanager configuration, generated from the catalog.

Hand-written rules drift from the catalog; untested rules page at 3 a.m. or never. Everything
that varies (selectors, the labels that identify a bot, durations, severities, URLs) is a key of
the mixin config (``CONFIG`` in ``rules/config.py`` holds the defaults, a YAML file overrides
them), in the style of the kubernetes mixins; the failure points themselves come from
``exporter/catalog.yaml``. Every rule keeps the bot's target labels (``rules/labels.py``).
``make generate`` writes ``rules/trading-readiness.rules.yml`` and
``alertmanager/alertmanager.yml`` for the defaults, ``trading-readiness generate`` for any
config; tests run promtool/amtool on them and fail on drift.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exporter.core.catalog import Catalog, FailurePoint, load

from .alertmanager import alertmanager_config, render_alertmanager
from .config import CONFIG, DOCS_BASE_URL, HEADER, config, dump, duration_seconds, validate
from .labels import bot_name, on_bot, on_point, per_bot

__all__ = ["ALERTMANAGER_FILE", "ALERTMANAGER_PATH", "CONFIG", "DOCS_BASE_URL", "RULES_FILE", "RULES_PATH",
           "alertmanager_config", "artefacts", "config", "duration_seconds", "render_alertmanager", "render_rules",
           "render_stack", "rule_groups", "stack_overrides", "validate"]


RULES_PATH = "rules/trading-readiness.rules.yml"
ALERTMANAGER_PATH = "alertmanager/alertmanager.yml"


#: the uid of the overview dashboard (grafana/dashboards.py) that alerts link to
OVERVIEW_UID = "trading-readiness-overview"


def runbook_url(cfg: dict[str, Any], p: FailurePoint) -> str:
    """The point's section of the catalog (docs/FAILURE_POINTS.md) below the runbook base."""
    return f"{points_runbook(cfg)}#{p.anchor}"


def points_runbook(cfg: dict[str, Any]) -> str:
    return f"{cfg['runbook_base_url'].rstrip('/')}/FAILURE_POINTS.md"


def dashboard_url(cfg: dict[str, Any]) -> str:
    """The overview dashboard, filtered to the alert's bot when the alert has a bot label."""
    bot = cfg["bot_label"]
    return (f"{cfg['grafana_url'].rstrip('/')}/d/{OVERVIEW_UID}"
            f"{{{{ with $labels.{bot} }}}}?var-{bot}={{{{ . | urlquery }}}}{{{{ end }}}}")


def _sel(cfg: dict[str, Any], **extra: str) -> str:
    labels = {"job": cfg["exporter_job"], **extra}
    return "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def readiness_expr(cfg: dict[str, Any]) -> str:
    """PromQL for trading:readiness:status, mirroring exporter.core.model.verdict per bot.

    BLOCKED (2) if any point is ERROR; else DEGRADED (1) if the number of WARN points exceeds the
    exporter's own trading_readiness_max_warnings; else READY (0). SKIPPED (-1) is neither.
    ``== bool`` keeps a 0 for every bot, so READY is an explicit 0 and not a missing series. A
    bot is one set of target labels (see ``per_bot``): two bots behind one job never share a verdict.
    """
    status = f"trading_failure_point_status{_sel(cfg)}"
    max_warnings = f"trading_readiness_max_warnings{_sel(cfg)}"
    default = int(cfg["default_max_warnings"])
    by, on = per_bot(cfg), on_bot(cfg)
    return (
        "clamp_max(\n"
        f"    2 * (max {by} ({status}) == bool 2)\n"
        "  +\n"
        f"    (sum {by} ({status} == bool 1)\n"
        f"      > bool {on}\n"
        f"    (max {by} ({max_warnings})\n"
        f"      or {on} (0 * count {by} ({status}) + {default}))),\n"
        "  2\n"
        ")"
    )


def _runbook_template(cfg: dict[str, Any]) -> str:
    # The anchor is derived from the fp label exactly as FailurePoint.anchor derives it.
    return points_runbook(cfg) + '#{{ $labels.fp | toLower | reReplaceAll "\\\\." "" }}'


def alert_runbook_url(cfg: dict[str, Any], alert: str) -> str:
    """The section of docs/runbooks.md for ``alert`` (GitHub's anchor of a heading is its lower case)."""
    return f"{cfg['runbook_base_url'].rstrip('/')}/runbooks.md#{alert.lower()}"


def readiness_group(cfg: dict[str, Any]) -> dict[str, Any]:
    """The recording rule and the alerts that read it: one group, so they evaluate in order."""
    name = bot_name(cfg)
    return {
        "name": "trading-readiness",
        "rules": [
            {"record": "trading:readiness:status", "expr": readiness_expr(cfg)},
            readiness_alert(cfg, "TradingBlocked", 2, "blocked", "Trading is BLOCKED on " + name,
                            "At least one failure point is ERROR on " + name + ", so the bot will not trade. "
                            "The TradingFailurePoint alerts with severity critical name the points; "
                            "`trading-readiness check` explains each one."),
            readiness_alert(cfg, "TradingDegraded", 1, "degraded", "Trading is DEGRADED on " + name,
                            "More failure points are WARN on " + name + " than readiness.max_warnings allows; "
                            "the bot still trades, but some signals or orders are being lost. The "
                            "TradingFailurePoint warnings name the points."),
        ],
    }


def readiness_alert(cfg: dict[str, Any], alert: str, value: int, key: str, summary: str,
                    description: str) -> dict[str, Any]:
    """An alert on the recording rule's verdict (2 BLOCKED, 1 DEGRADED); ``for:`` and severity from
    ``<key>_for`` and ``severity.<key>``; its runbook and the per-bot dashboard linked."""
    return {"alert": alert, "expr": f"trading:readiness:status == {value}", "for": cfg[f"{key}_for"],
            "labels": {"severity": cfg["severity"][key]},
            "annotations": {"summary": summary, "description": description,
                            "runbook_url": alert_runbook_url(cfg, alert), "dashboard": dashboard_url(cfg)}}


def joined(cfg: dict[str, Any], expr: str, info: str, labels: str) -> str:
    """``expr`` with ``labels`` joined from the info series ``info`` of the same bot and point.

    The ``or`` keeps the result when the info series is missing: a point that fails must alert
    even if its labels cannot be looked up.
    """
    on = on_point(cfg)
    return (f"({expr})\n  * {on} group_left ({labels}) {info}\n"
            f"or {on}\n  ({expr})")


def failure_point_rules(cfg: dict[str, Any], p: FailurePoint) -> list[dict[str, Any]]:
    """One alert per level of one point; the healer label is joined from trading_failure_point_info."""
    sev = cfg["severity"]
    for_ = cfg["point_for"].get(p.id) or cfg["failure_point_for"] or p.alert_for
    status = f"trading_failure_point_status{_sel(cfg, fp=p.id)}"
    info = f"trading_failure_point_info{_sel(cfg, fp=p.id)}"
    rules = []
    for value, level, severity in ((2, "ERROR", sev["fp_error"]), (1, "WARN", sev["fp_warn"])):
        text = p.levels.get("error" if value == 2 else "warn")
        if text is None:
            # A level the catalog never produces still alerts: the check knows more than its docs.
            text = f"{p.id} reports {level}."
        rules.append({
            "alert": "TradingFailurePoint",
            "expr": joined(cfg, f"{status} == {value}", info, "healer"),
            "for": for_,
            "labels": {"severity": severity, "fp": p.id, "category": p.category},
            "annotations": {
                "summary": f"{p.id} {p.name}: {level} on {bot_name(cfg)}",
                # The healer named is the one this exporter has configured (the label), not the
                # catalog's suggestion: the page must not promise a healer that is not running.
                "description": (f"{p.detects} {text} "
                                "The reason is in /api/failure_points and `trading-readiness check --only "
                                f"{p.id}`." "{{ if $labels.healer }} Healer: {{ $labels.healer }}."
                                "{{ else }} No healer is configured: a human must fix it.{{ end }}"),
                "runbook_url": runbook_url(cfg, p),
            },
        })
    return rules


def healer_alert(cfg: dict[str, Any], alert: str, metric: str, annotations: dict[str, str]) -> dict[str, Any]:
    """An alert on a healer's per-point flag (``metric`` == 1), with the point's category and
    healer from the healer's info series; ``for:`` and severity from the config key named after
    the metric (``trading_healer_stuck`` -> ``healer_stuck_for``, ``severity.healer_stuck``)."""
    key = metric.removeprefix("trading_")
    job = cfg["healer_job"]
    return {
        "alert": alert,
        "expr": joined(cfg, f'{metric}{{job="{job}"}} == 1', f'trading_healer_info{{job="{job}"}}', "category, healer"),
        "for": cfg[f"{key}_for"],
        "labels": {"severity": cfg["severity"][key]},
        "annotations": annotations,
    }


def meta_group(cfg: dict[str, Any]) -> dict[str, Any]:
    """Alerts about the monitoring itself: a silent exporter must never look like READY."""
    sev = cfg["severity"]
    job = cfg["exporter_job"]
    name = bot_name(cfg)
    return {
        "name": "trading-readiness-meta",
        "rules": [
            {
                "alert": "TradingReadinessExporterDown",
                "expr": f'up{{job="{job}"}} == 0\nor\nabsent(up{{job="{job}"}})',
                "for": cfg["exporter_down_for"],
                "labels": {"severity": sev["exporter_down"]},
                "annotations": {
                    "summary": "The trading-readiness exporter is not being scraped (" + name + ")",
                    "description": ("Prometheus cannot scrape the trading-readiness exporter (or has no target "
                                    "for it). Readiness is unknown: no alert about the bot can fire until it is "
                                    "back. Check `systemctl status trading-readiness` and the listen address."),
                    "runbook_url": alert_runbook_url(cfg, "TradingReadinessExporterDown"),
                },
            },
            healer_alert(cfg, "TradingHealerGaveUp", "trading_healer_gave_up", {
                "summary": "The healer gave up on {{ $labels.fp }} (" + name + ")",
                "description": ("The healer ran its action for {{ $labels.fp }} max_attempts times in its "
                                "window without fixing it and will not try again until the alert resolves (the "
                                "point is OK again), which restores its attempts. A human must fix the cause; "
                                "see /api/heals on the healer."),
                "runbook_url": alert_runbook_url(cfg, "TradingHealerGaveUp"),
                # what the point itself means and how to fix it
                "fp_runbook_url": _runbook_template(cfg),
            }),
            healer_alert(cfg, "TradingHealerStuck", "trading_healer_stuck", {
                "summary": "Healing {{ $labels.fp }} is stuck (" + name + ")",
                "description": ("The healer has held {{ $labels.fp }} queued, running or verifying for longer "
                                "than its action's timeout plus its verification: every alert for it is "
                                "skipped as busy and nothing heals it. See the healer's log and "
                                "/api/heals (state); restarting the healer resolves what it had started."),
                "runbook_url": _runbook_template(cfg),
            }),
            {
                "alert": "Watchdog",
                "expr": "vector(1)",
                "labels": {"severity": sev["watchdog"]},
                "annotations": {
                    "summary": "Alerting pipeline heartbeat",
                    "description": ("Always firing. If the heartbeat receiver stops getting it, Prometheus or "
                                    "Alertmanager is down and no other alert can reach anyone."),
                    "runbook_url": alert_runbook_url(cfg, "Watchdog"),
                },
            },
        ],
    }




def staleness_group(cfg: dict[str, Any]) -> dict[str, Any]:
    """A point whose result is old, or that was never checked: its status is not the present.

    These join every point of every bot and wait minutes anyway (3 check intervals plus the slack,
    then ``stale_for``), so they run in a group of their own at ``stale_evaluation_interval``
    instead of at every evaluation, where they were most of a shard's rule time.
    """
    sev = cfg["severity"]
    name = bot_name(cfg)
    last = f"trading_failure_point_last_check_timestamp_seconds{_sel(cfg)}"
    interval = f"trading_failure_point_interval_seconds{_sel(cfg)}"
    threshold = f"({cfg['stale_factor']} * {interval} + {float(cfg['stale_slack_seconds']):g})"
    point, bot = on_point(cfg), on_bot(cfg)
    stale_expr = f"(time() - {last})\n  > {point}\n  {threshold}"
    # A point the exporter schedules (it has an interval) but has never finished checking since
    # it (re)loaded its config: its status is not an old result but none at all. The value is the
    # time since the load, so the threshold is the same as for a stale point.
    loaded = f"trading_exporter_config_last_reload_timestamp_seconds{_sel(cfg)}"
    never_expr = (f"(\n  0 * ({interval} unless {point} {last})\n"
                  f"  + {bot} group_left ()\n  (time() - {loaded})\n)\n"
                  f"  > {point}\n  {threshold}")
    stale_text = (", more than " + str(cfg["stale_factor"]) + " check intervals (plus "
                  + f"{float(cfg['stale_slack_seconds']):g}" + " s)")
    # the stale and gave-up alerts carry the point's category and healer like TradingFailurePoint
    info = f"trading_failure_point_info{_sel(cfg)}"
    stale_expr = joined(cfg, stale_expr, info, "category, healer")
    never_expr = joined(cfg, never_expr, info, "category, healer")
    return {
        "name": "trading-readiness-staleness",
        "interval": cfg["stale_evaluation_interval"],
        "rules": [
            {
                "alert": "TradingFailurePointStale",
                "expr": stale_expr,
                "for": cfg["stale_for"],
                "labels": {"severity": sev["stale"], "reason": "old_result"},
                "annotations": {
                    "summary": "{{ $labels.fp }} has not been checked recently on " + name,
                    "description": ("{{ $labels.fp }} was last checked {{ $value | humanizeDuration }} ago"
                                    + stale_text + ". Its status is an old result, not the present: the check "
                                    "is hung or the exporter's scheduler stopped."),
                    "runbook_url": alert_runbook_url(cfg, "TradingFailurePointStale"),
                    # what the point itself means and how to fix it
                    "fp_runbook_url": _runbook_template(cfg),
                },
            },
            {
                "alert": "TradingFailurePointStale",
                "expr": never_expr,
                "for": cfg["stale_for"],
                "labels": {"severity": sev["stale"], "reason": "never_checked"},
                "annotations": {
                    "summary": "{{ $labels.fp }} has never been checked on " + name,
                    "description": ("The exporter loaded its config {{ $value | humanizeDuration }} ago"
                                    + stale_text + ", and {{ $labels.fp }} has no result yet: it exports no "
                                    "status, so it cannot block or degrade readiness. The check is hung or "
                                    "the exporter's scheduler stopped."),
                    "runbook_url": alert_runbook_url(cfg, "TradingFailurePointStale"),
                    # what the point itself means and how to fix it
                    "fp_runbook_url": _runbook_template(cfg),
                },
            },
        ],
    }


def rule_groups(cat: Catalog | None = None, **overrides: Any) -> dict[str, Any]:
    cfg = config(**overrides)
    cat = cat or load()
    fp_rules = [r for p in cat for r in failure_point_rules(cfg, p)]
    return {"groups": [readiness_group(cfg), {"name": "trading-readiness-failure-points", "rules": fp_rules},
                       meta_group(cfg), staleness_group(cfg)]}


def render_rules(cat: Catalog | None = None, **overrides: Any) -> str:
    return HEADER + dump(rule_groups(cat, **overrides))


RULES_FILE = "trading-readiness.rules.yml"
ALERTMANAGER_FILE = "alertmanager.yml"


def render_stack(*, scrape_interval: str | None = None, alert_for: str | None = None,
                 webhook_base_url: str | None = None, healer_url: str | None = None,
                 healer_token_file: str | Path | None = None, notify_interval: str | None = None,
                 stale_slack_seconds: float | None = None, catalog: Catalog | None = None,
                 out_dir: Path | None = None) -> dict[str, str]:
    """Rules and Alertmanager config for a demo or test stack: {file name: text}.

    ``scrape_interval`` is the Prometheus scrape interval the stack uses; the exporter-down
    ``for:`` becomes at least twice it and the stale slack at least once it. ``alert_for``
    replaces every other ``for:`` (readiness, per point, stale, healer gave up) so a demo sees
    alerts within seconds. ``webhook_base_url`` (e.g. ``http://127.0.0.1:PORT``) is where the
    pager, ticket and heartbeat receivers post (``/pager``, ``/ticket``, ``/heartbeat``);
    ``healer_url`` is the healer's ``/alertmanager`` URL and ``healer_token_file`` the file
    holding its bearer token. ``stale_slack_seconds`` (default: CONFIG's 60 s, which covers a
    check's timeout, so a slow broker in a demo is not reported stale) is raised to at least one
    scrape interval. ``notify_interval`` shortens Alertmanager's group wait (to 0s) and
    its group/repeat intervals (to the value given). With ``out_dir`` the files are written
    there as ``trading-readiness.rules.yml`` and ``alertmanager.yml``.
    """
    overrides = stack_overrides(scrape_interval=scrape_interval, alert_for=alert_for,
                                webhook_base_url=webhook_base_url, healer_url=healer_url,
                                healer_token_file=healer_token_file, notify_interval=notify_interval,
                                stale_slack_seconds=stale_slack_seconds)
    cat = catalog or load()
    out = {RULES_FILE: render_rules(cat, **overrides), ALERTMANAGER_FILE: render_alertmanager(cat, **overrides)}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, text in out.items():
            (out_dir / name).write_text(text)
    return out


def stack_overrides(*, scrape_interval: str | None = None, alert_for: str | None = None,
                    webhook_base_url: str | None = None, healer_url: str | None = None,
                    healer_token_file: str | Path | None = None, notify_interval: str | None = None,
                    stale_slack_seconds: float | None = None) -> dict[str, Any]:
    """The rule-config overrides of a demo or test stack (see :func:`render_stack` for each one);
    the fleet generator takes the same ones."""
    overrides: dict[str, Any] = {}
    am: dict[str, Any] = {}
    scrape = duration_seconds(scrape_interval) if scrape_interval else duration_seconds(CONFIG["scrape_interval"])
    if scrape_interval:
        overrides["scrape_interval"] = scrape_interval
    if alert_for is not None:
        duration_seconds(alert_for)
        for key in ("blocked_for", "degraded_for", "stale_for", "healer_gave_up_for", "healer_stuck_for",
                    "failure_point_for"):
            overrides[key] = alert_for
    down_for = max(duration_seconds(alert_for) if alert_for is not None
                   else duration_seconds(CONFIG["exporter_down_for"]), 2 * scrape)
    overrides["exporter_down_for"] = _duration(down_for)
    slack = float(CONFIG["stale_slack_seconds"]) if stale_slack_seconds is None else float(stale_slack_seconds)
    overrides["stale_slack_seconds"] = max(slack, scrape)
    if webhook_base_url:
        base = webhook_base_url.rstrip("/")
        am.update(pager_url=f"{base}/pager", ticket_url=f"{base}/ticket", heartbeat_url=f"{base}/heartbeat")
    if healer_url:
        am["healer_url"] = healer_url
    if healer_token_file is not None:
        am["healer_token_file"] = str(healer_token_file)
    if notify_interval:
        duration_seconds(notify_interval)
        am.update(group_wait="0s", healer_group_wait="0s")
        for key in ("group_interval", "repeat_interval", "pager_repeat_interval", "healer_group_interval",
                    "healer_repeat_interval", "heartbeat_interval"):
            am[key] = notify_interval
    if am:
        overrides["alertmanager"] = am
    return overrides


def _duration(seconds: float) -> str:
    """Prometheus duration text of whole seconds (or milliseconds below a second)."""
    if seconds != int(seconds):
        return f"{int(round(seconds * 1000))}ms"
    return f"{int(seconds)}s"


def artefacts(cfg: dict[str, Any] | None = None) -> dict[str, str]:
    """{relative path: text} for the mixin config ``cfg`` (default: CONFIG, what `make generate`
    commits and the drift tests compare)."""
    overrides = cfg or {}
    return {RULES_PATH: render_rules(**overrides), ALERTMANAGER_PATH: render_alertmanager(**overrides)}
