"""The Grafana dashboard and the alert rules only use metrics the proxy really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tlsproxy.metrics import ProxyMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
METRIC_NAME = re.compile(r"\btlsproxy_[a-z0-9_]+")


def exported_names() -> set[str]:
    names: set[str] = set()
    metrics = ProxyMetrics()
    metrics.add_relayed_bytes_source(lambda: [("route", "client_to_server", 0)])  # as the Proxy registers it
    for family in metrics.registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [])
        names.update(family.name + suffix for suffix in suffixes)
    return names


def test_dashboard_queries_use_exported_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "tlsproxy-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert expressions
    used = {name for expression in expressions for name in METRIC_NAME.findall(expression)}
    assert used and used <= exported_names(), used - exported_names()


def test_alert_rules_use_exported_metrics() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "tlsproxy-alerts.yaml").read_text())
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert len(expressions) >= 4
    used = {name for expression in expressions for name in METRIC_NAME.findall(expression)}
    assert used <= exported_names(), used - exported_names()
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert {"TlsproxyUpstreamCertificateExpiresSoon", "TlsproxyHandshakeFailures", "TlsproxySaturated"} <= alerts
