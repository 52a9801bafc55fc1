"""The PromQL verdict (`trading:readiness:status`) equals the Python verdict (`exporter.core.model.verdict`).

Approach: hypothesis generates the cases (`@given` over a random subset of catalog points, each
with a random status in SKIPPED/OK/WARN/ERROR, and a random max_warnings 0..4); the given
function only collects them. Every case then becomes its own `instance` in ONE promtool unit-test
file — one status series per point per case plus that case's max_warnings series — with one
`promql_expr_test` per case expecting the Python verdict. A single `promtool test rules` run
evaluates the committed recording rule over all cases (a few seconds, no server), and a
disagreement names the case, its status vector and both verdicts. Cases are new every run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.core.catalog import load
from exporter.core.model import Status, verdict
from rules import generate as rulegen

REPO = Path(__file__).resolve().parent.parent
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
MIN_CASES = 200

pytestmark = pytest.mark.skipif(not Path(PROMTOOL).exists(), reason="promtool not installed (make system-deps)")

CATALOG = load()
STATUSES = [Status.SKIPPED, Status.OK, Status.WARN, Status.ERROR]


@st.composite
def cases(draw: Any) -> tuple[dict[str, Status], int]:
    """A status per point for a random subset of the catalog, and a max_warnings."""
    fps = draw(st.lists(st.sampled_from(CATALOG.ids()), min_size=1, unique=True))
    # A per-case mix keeps all three verdicts common: uniform statuses over ~45 points would
    # almost always contain an ERROR, and the DEGRADED/READY threshold would be barely tested.
    allowed = draw(st.lists(st.sampled_from(STATUSES), min_size=1, max_size=4, unique=True))
    statuses = {fp: draw(st.sampled_from(allowed)) for fp in fps}
    return statuses, draw(st.integers(min_value=0, max_value=4))


def collect_cases() -> list[tuple[dict[str, Status], int]]:
    collected: list[tuple[dict[str, Status], int]] = []

    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(cases())
    def collect(case: tuple[dict[str, Status], int]) -> None:
        collected.append(case)

    collect()
    unique = {(tuple(sorted((k, v.value) for k, v in s.items())), m): (s, m) for s, m in collected}
    return list(unique.values())


def test_promql_verdict_equals_python_verdict(tmp_path: Path) -> None:
    generated = collect_cases()
    assert len(generated) >= MIN_CASES, f"only {len(generated)} distinct cases generated"
    series: list[dict[str, str]] = []
    tests: list[dict[str, Any]] = []
    expected: dict[str, tuple[dict[str, Status], int, int]] = {}
    for i, (statuses, max_warnings) in enumerate(generated):
        inst = f"case-{i}"
        # every other case is a bot of a fleet: all of them on one instance, told apart only by
        # their bot label, so a verdict that mixed two bots' points would show
        target = f'instance="{inst}"' if i % 2 == 0 else f'instance="fleet-host", bot="{inst}", env="paper"'
        for fp, status in statuses.items():
            series.append({"series": (f'trading_failure_point_status{{job="trading-readiness", {target}, '
                                      f'fp="{fp}", category="{CATALOG[fp].category}"}}'),
                           "values": f"{status.value}x4"})
        series.append({"series": f'trading_readiness_max_warnings{{job="trading-readiness", {target}}}',
                       "values": f"{max_warnings}x4"})
        want = verdict(list(statuses.values()), max_warnings).value
        expected[inst] = (statuses, max_warnings, want)
        tests.append({"expr": f'trading:readiness:status{{{target}}}', "eval_time": "1m",
                      "exp_samples": [{"labels": f'trading:readiness:status{{job="trading-readiness", {target}}}',
                                       "value": want}]})
    # the generated cases really cover every verdict and both sides of the warning threshold
    verdicts = [w for _, _, w in expected.values()]
    assert {0, 1, 2} <= set(verdicts), verdicts
    warn_counts = [(sum(s is Status.WARN for s in st_.values()), m) for st_, m, w in expected.values() if w != 2]
    assert any(n == m for n, m in warn_counts) and any(n == m + 1 for n, m in warn_counts), warn_counts

    path = tmp_path / "equivalence.test.yml"
    path.write_text(yaml.safe_dump({
        "rule_files": [str(REPO / rulegen.RULES_PATH)], "evaluation_interval": "15s",
        "tests": [{"interval": "15s", "input_series": series, "promql_expr_test": tests}]}, sort_keys=False))
    r = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        bad = sorted(set(re.findall(r'(?:instance|bot)=\\?"(case-\d+)', r.stdout + r.stderr)))
        details = [f"{inst}: max_warnings={expected[inst][1]} python={expected[inst][2]} "
                   f"statuses={ {fp: s.name for fp, s in expected[inst][0].items()} }" for inst in bad[:10]]
        pytest.fail("PromQL and Python verdicts disagree:\n" + "\n".join(details or [r.stdout[-3000:] + r.stderr]))
