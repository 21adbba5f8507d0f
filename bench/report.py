"""report.md and PNG plots from a run's results (bench.model.RunResults, the folder's results.json).

Everything here is a pure function of the results, so a report can be rendered again from an old
results.json (`python -m bench report DIR`, or `write_report(RunResults.load(path), folder)`) and a
test can render a fixture. bench/analysis.py makes the comparisons, bench/report_markdown.py writes
the tables and bench/report_plots.py draws the plots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.analysis import HEADLINE, RunAnalysis
from bench.model import RunResults
from bench.report_markdown import markdown
from bench.report_plots import write_plots

__all__ = ["HEADLINE", "write_report"]


def write_report(results: RunResults | dict[str, Any], out: Path) -> None:
    """Write out/report.md and the PNG plots it links to (`results` may also be results.json's dict)."""
    if not isinstance(results, RunResults):
        results = RunResults.from_json(results)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = RunAnalysis(results)
    plots, plot_note = write_plots(run, out)
    (out / "report.md").write_text(markdown(run, plots, plot_note), encoding="utf-8")
