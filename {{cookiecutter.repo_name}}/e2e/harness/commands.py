"""Command lines the harness runs, built in one place so they can be checked without a cluster."""

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from e2e.harness import budget
from repo_tools import kustomize


@dataclass
class Tools:
    kind: str
    kubectl: str
    helm: str
    istioctl: str | None = None
    kubeconfig: Path = field(default_factory=Path)


def kubectl(tools: Tools, *args: str) -> list[str]:
    return [tools.kubectl, f"--kubeconfig={tools.kubeconfig}", *args]


def render_with_helm(tools: Tools, directory: Path) -> list[str]:
    """Render a kustomization whose helmCharts need Helm: kustomize's own flags for it."""
    return [*kustomize.kustomize_command(), "--enable-helm", f"--helm-command={tools.helm}", str(directory)]


def apply_stdin(tools: Tools, field_manager: str = "kubectl", namespace: str = "") -> list[str]:
    """Server-side apply of stdin; a field manager of its own keeps one apply from removing another's fields."""
    scope = ["-n", namespace] if namespace else []
    return kubectl(
        tools, *scope, "apply", "--server-side", "--force-conflicts", f"--field-manager={field_manager}", "-f", "-"
    )


def rollout_status(tools: Tools, namespace: str, name: str, kind: str = "deployment") -> list[str]:
    return kubectl(tools, "-n", namespace, "rollout", "status", f"{kind}/{name}", f"--timeout={budget.ROLLOUT}s")


def exec_in(tools: Tools, namespace: str, pod: str, container: str, command: list[str]) -> list[str]:
    return kubectl(tools, "-n", namespace, "exec", pod, "-c", container, "--", *command)


TIMED_OUT = 124  # the exit status timeout(1) gives a command it stopped


def run(command: list[str], stdin: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a command; one that hangs past `timeout` is stopped and reported as exit 124, never raised."""
    try:
        return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as expired:
        stdout = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        return subprocess.CompletedProcess(command, TIMED_OUT, stdout, f"timed out after {timeout:.0f}s")


def run_checked(command: list[str], stdin: str | None = None, timeout: float = 600) -> str:
    result = run(command, stdin, timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr.strip()}")
    return result.stdout
