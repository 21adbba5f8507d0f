"""The Dockerfile (linted with hadolint; its steps run in a fresh venv, since CI has no Docker engine)
and the Kubernetes manifests (validated against the Kubernetes schemas)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "deploy" / "kubernetes"


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_steps_in_a_fresh_venv(tmp_path: Path) -> None:
    """The build stage's commands, as written in the Dockerfile, then the image's entry point."""
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(REPO / "pyproject.toml", source)
    shutil.copy(REPO / "README.md", source)
    shutil.copytree(REPO / "tlsproxy", source / "tlsproxy", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "opt-tlsproxy"
    run = lambda *argv: subprocess.run(argv, cwd=source, capture_output=True, text=True, timeout=600)  # noqa: E731
    for argv in ([sys.executable, "-m", "venv", str(venv)],
                 [str(venv / "bin" / "pip"), "install", "--no-cache-dir", "."]):
        result = run(*argv)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    version = run(str(venv / "bin" / "tlsproxy"), "--version")
    assert version.returncode == 0 and version.stdout.startswith("tlsproxy "), version.stderr
    # ENTRYPOINT ["tlsproxy"] CMD ["--help"]; and no test or build tooling came along
    assert run(str(venv / "bin" / "tlsproxy"), "--help").returncode == 0
    # the subpackages come along: the sans-IO core and the demo (`tlsproxy demo`)
    modules = run(str(venv / "bin" / "python"), "-c", "import tlsproxy.mysql.handshake, tlsproxy.demo.run")
    assert modules.returncode == 0, modules.stderr
    assert run(str(venv / "bin" / "tlsproxy"), "demo", "--help").returncode == 0
    installed = run(str(venv / "bin" / "pip"), "list", "--format=freeze").stdout.lower().replace("_", "-")
    for runtime in ("uvloop", "cryptography", "prometheus-client", "pyyaml"):
        assert runtime in installed, installed
    for not_wanted in ("pytest", "pymysql", "matplotlib"):
        assert not_wanted not in installed, installed


def test_kubernetes_manifests_validate() -> None:
    validate = shutil.which("kubernetes-validate") or str(Path(sys.executable).parent / "kubernetes-validate")
    result = subprocess.run([validate, "--strict", str(KUBERNETES / "deployment.yaml")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_sidecar_shape_and_pod_monitor() -> None:
    documents = list(yaml.safe_load_all((KUBERNETES / "deployment.yaml").read_text()))
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]
    (sidecar,) = [c for c in pod["spec"]["initContainers"] if c["name"] == "tlsproxy"]
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar
    for probe, path in (("startupProbe", "/startup"), ("livenessProbe", "/liveness"), ("readinessProbe", "/readiness")):
        assert sidecar[probe]["httpGet"]["path"] == path
    assert sidecar["resources"]["requests"]
    assert any(mount["mountPath"] == "/etc/tlsproxy/ca" for mount in sidecar["volumeMounts"])
    assert any(volume.get("secret") for volume in pod["spec"]["volumes"])
    monitor = yaml.safe_load((KUBERNETES / "podmonitor.yaml").read_text())
    assert monitor["kind"] == "PodMonitor"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    ports = {port["name"] for port in sidecar["ports"]}
    assert {endpoint["port"] for endpoint in monitor["spec"]["podMetricsEndpoints"]} <= ports
