"""The supervisor's /metrics (`workers: N`): the workers' expositions combined sample by sample.

Every sample is summed over the workers (counters, histograms and gauges such as connections_active),
except the certificate notAfter (the earliest), build info (the maximum) and `_created` (the earliest).
"""

from __future__ import annotations

from typing import Iterable

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Families", "merge_families", "parse_metrics"]

MIN_GAUGES = frozenset({"tlsproxy_upstream_certificate_not_after_timestamp_seconds"})
MAX_GAUGES = frozenset({"tlsproxy_build_info"})


def _combine(name: str):  # type: ignore[no-untyped-def]
    if name.endswith("_created") or name in MIN_GAUGES:
        return min
    if name in MAX_GAUGES:
        return max
    return lambda a, b: a + b


def merge_families(sources: Iterable[Iterable[Metric]]) -> list[Metric]:
    """One family per name; each sample (name, labels) combined over the sources: summed, except
    `_created` and the certificate notAfter (the earliest) and build info (the maximum)."""
    merged: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for families in sources:
        for family in families:
            if family.name not in merged:
                merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                values[family.name] = {}
            combine, table = _combine(family.name), values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                table[key] = combine(table[key], sample.value) if key in table else sample.value
    for name, family in merged.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    return list(merged.values())


def parse_metrics(text: str) -> list[Metric]:
    return list(text_string_to_metric_families(text))


class Families:
    """What generate_latest needs of a registry."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families
