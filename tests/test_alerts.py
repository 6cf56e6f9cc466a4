"""The shipped Prometheus alert rules and Grafana dashboard: valid for promtool, firing when they should,
and naming only metrics agent/ops/metrics.py defines."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.ops import metrics
from agent.store import Store

ROOT = Path(__file__).parent.parent
ALERTS = ROOT / "config" / "alerts.yml"
DASHBOARD = ROOT / "config" / "grafana-dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian: apt-get install prometheus)"
)
_NAME = re.compile(r"\bdodo_outbox_[a-z0-9_]+")


def known_names(tmp_path: Path) -> set[str]:
    """Every sample name /metrics can carry, including the outbox gauges."""
    with Store(tmp_path / "names.db") as store:
        metrics.watch_store(store, max_events=10)
        try:
            families = list(metrics.REGISTRY.collect())
        finally:
            metrics.unwatch_store()
    names: set[str] = set()
    for family in families:
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "info": ("_info",)}
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


def test_alert_rules_name_only_real_metrics(tmp_path: Path) -> None:
    used = set(_NAME.findall(ALERTS.read_text()))
    assert used and used <= known_names(tmp_path), used - known_names(tmp_path)


def test_dashboard_is_valid_json_and_names_only_real_metrics(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    known = known_names(tmp_path)
    panels = dashboard["panels"]
    assert panels
    for panel in panels:
        if panel.get("type") == "row":
            continue
        exprs = [target["expr"] for target in panel.get("targets", [])]
        assert exprs, f"panel {panel.get('title')!r} has no query"
        for expr in exprs:
            used = set(_NAME.findall(expr))
            assert used, f"panel {panel['title']!r}: {expr}"
            assert used <= known, f"panel {panel['title']!r} uses unknown metrics {used - known}"


@needs_promtool
def test_promtool_check_rules() -> None:
    assert PROMTOOL is not None
    proc = subprocess.run(
        [PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def _without_annotations(text: str) -> str:
    """The rules minus their annotations: the unit tests below check when alerts fire and with which
    labels; the wording of the messages is free to change (promtool check rules validates it)."""
    kept: list[str] = []
    skipping = False
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip())
        if line.strip() == "annotations:":
            skipping, depth = True, indent
            continue
        if skipping and line.strip() and indent <= depth:
            skipping = False
        if not skipping:
            kept.append(line)
    return "\n".join(kept) + "\n"


UNIT_TESTS = """
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'dodo_outbox_oldest_pending_age_seconds{instance="a",job="dodo-outbox"}'
        values: '600+60x40'
      - series: 'dodo_outbox_delivery_paused{instance="a",job="dodo-outbox",reason="auth"}'
        values: '0 0 1x20'
      - series: 'dodo_outbox_delivery_success_ratio{instance="a",job="dodo-outbox",window="1h"}'
        values: '1x5 0.95x20'
      - series: 'dodo_outbox_events_dead_lettered_total{instance="a",job="dodo-outbox",reason="rejected"}'
        values: '0x10 3x20'
      - series: 'up{instance="a",job="dodo-outbox"}'
        values: '1x3 0x20'
      - series: 'dodo_outbox_events{instance="a",job="dodo-outbox",state="pending"}'
        values: '900x30'
      - series: 'dodo_outbox_max_events{instance="a",job="dodo-outbox"}'
        values: '1000x30'
      - series: 'dodo_outbox_agents{instance="a",job="dodo-outbox",state="gone"}'
        values: '0x3 1x20'
    alert_rule_test:
      - {eval_time: 20m, alertname: DodoOutboxBacklogOld, exp_alerts: []}
      - eval_time: 25m
        alertname: DodoOutboxBacklogOld
        exp_alerts: [{exp_labels: {severity: critical, instance: a, job: dodo-outbox}}]
      - {eval_time: 3m, alertname: DodoOutboxDeliveryPaused, exp_alerts: []}
      - eval_time: 5m
        alertname: DodoOutboxDeliveryPaused
        exp_alerts: [{exp_labels: {severity: critical, instance: a, reason: auth}}]
      - {eval_time: 8m, alertname: DodoOutboxDeliverySuccessLow, exp_alerts: []}
      - eval_time: 12m
        alertname: DodoOutboxDeliverySuccessLow
        exp_alerts: [{exp_labels: {severity: warning, instance: a, job: dodo-outbox, window: 1h}}]
      - {eval_time: 9m, alertname: DodoOutboxDeadLetters, exp_alerts: []}
      - eval_time: 15m
        alertname: DodoOutboxDeadLetters
        exp_alerts: [{exp_labels: {severity: warning, instance: a, reason: rejected}}]
      - {eval_time: 6m, alertname: DodoOutboxDown, exp_alerts: []}
      - eval_time: 10m
        alertname: DodoOutboxDown
        exp_alerts: [{exp_labels: {severity: critical, instance: a, job: dodo-outbox}}]
      - {eval_time: 10m, alertname: DodoOutboxAbsent, exp_alerts: []}
      - {eval_time: 5m, alertname: DodoOutboxRefusingEvents, exp_alerts: []}
      - {eval_time: 7m, alertname: DodoOutboxAgentGone, exp_alerts: []}
      - eval_time: 10m
        alertname: DodoOutboxAgentGone
        exp_alerts: [{exp_labels: {severity: warning, instance: a}}]
      - eval_time: 15m
        alertname: DodoOutboxNearlyFull
        exp_alerts: [{exp_labels: {severity: warning, instance: a}}]
  - interval: 1m
    input_series:
      - series: 'dodo_outbox_events{instance="a",state="pending"}'
        values: '1x20'
    alert_rule_test:
      - eval_time: 11m
        alertname: DodoOutboxAbsent
        exp_alerts: [{exp_labels: {severity: critical}}]
"""


@needs_promtool
def test_alerts_fire_when_they_should(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    (tmp_path / "rules.yml").write_text(_without_annotations(ALERTS.read_text()))
    (tmp_path / "tests.yml").write_text(UNIT_TESTS)
    proc = subprocess.run(
        [PROMTOOL, "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each panel query, with Grafana's variables filled in, as a recording rule for promtool to parse."""
    assert PROMTOOL is not None
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "5m").replace("$instance", ".*")
            lines += [
                f"      - record: dashboard:panel{panel['id']}:{target['refId']}",
                f"        expr: {json.dumps(expr)}",
            ]
    (tmp_path / "dashboard.yml").write_text("\n".join(lines) + "\n")
    proc = subprocess.run(
        [PROMTOOL, "check", "rules", str(tmp_path / "dashboard.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
