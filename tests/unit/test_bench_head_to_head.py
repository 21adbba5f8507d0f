"""bench.head_to_head's reading of its tools' output and its report, without running anything."""

from __future__ import annotations

from pathlib import Path

from bench.head_to_head import profile_summary, report, strace_calls

STRACE_C = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 47.51    0.040348           6      6009           write
 29.29    0.024877           4      6016           epoll_pwait
 21.72    0.018448           3      6037         1 read
------ ----------- ----------- --------- --------- ----------------
100.00    0.084921           4     18070         1 total
"""


def test_strace_calls_reads_the_calls_column_with_or_without_errors() -> None:
    assert strace_calls(STRACE_C) == {"write": 6009, "epoll_pwait": 6016, "read": 6037}


def test_profile_summary_counts_waiting_and_system_calls_apart(tmp_path: Path) -> None:
    raw = tmp_path / "py-spy.txt"
    raw.write_text("main;run;epoll_pwait 50\nmain;run;TlsLeg.write (tlsproxy/tls_leg.py:1);write 30\n"
                   "main;run;Session.client_data (tlsproxy/session.py:2) 20\n")
    summary = profile_summary(raw)
    assert (summary["samples"], summary["waiting"], summary["busy"]) == (100, 50, 50)
    assert summary["busy_in_system_calls"] == 0.6
    assert summary["top_leaves"] == [("write", 0.6), ("Session.client_data", 0.4)]


def sample(workload: str, scenario: str, repetition: int, rate: float, cpu_us: float) -> dict[str, object]:
    return {"workload": workload, "variant": "threads=1", "scenario": scenario, "repetition": repetition,
            "rate": rate, "relay_us_per_unit": cpu_us, "relay_cpu_s": cpu_us and 1.0}


def test_report_gives_medians_spread_and_ratios() -> None:
    samples = [sample("point_select", name, repetition, rate + repetition, cpu)
               for repetition in range(3)
               for name, rate, cpu in (("base", 100.0, 40.0), ("new", 120.0, 30.0), ("socat", 120.0, 30.0))]
    text = report({"base_tree_commit": "aaa", "new_tree_commit": "bbb", "repetitions": 3, "seconds": 5.0,
                   "samples": samples, "strace": {"point_select new": {"units": 1000, "calls": {"read": 2000,
                                                                                                "write": 2000}}}})
    assert "| new | 121.0 [120.0-122.0] | 30.0 [30.0-30.0] |" in text
    assert "- base / socat: rate 0.835x, CPU per query 1.333x" in text
    assert "- new / base: rate 1.198x, CPU 0.750x" in text
    assert "- strace point_select new: read 2.00, write 2.00 (per query; total 4.00)" in text
