"""The atheris harnesses in fuzz/ run: a few hundred coverage-guided iterations each from the seed
corpus (the long runs are manual, see fuzz/README.md). A harness whose property breaks exits non-zero."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"
RUNS = 300


@pytest.mark.parametrize("harness", ["codec", "handshake_client", "handshake_server"])
def test_harness_runs_from_its_seed_corpus(harness: str, tmp_path: Path) -> None:
    seeds = FUZZ / "corpus" / harness
    assert len(list(seeds.iterdir())) >= 20
    work = tmp_path / "corpus"
    shutil.copytree(seeds, work)  # libFuzzer adds what it finds to the first corpus directory
    result = subprocess.run(
        [sys.executable, str(FUZZ / f"fuzz_{harness}.py"), str(work), f"-runs={RUNS}", "-seed=1",
         f"-artifact_prefix={tmp_path}/", "-print_final_stats=1"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Done {RUNS} runs" in result.stderr
    assert "stat::number_of_executed_units" in result.stderr
    assert not list(tmp_path.glob("crash-*"))
