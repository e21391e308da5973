"""The kind cluster: its config (fixed NodePorts mapped to 127.0.0.1) and creation with retries."""

import subprocess
import time
from pathlib import Path

import yaml

from e2e.harness import budget
from e2e.harness.settings import Settings

# Messages of cluster creation failures that a second attempt usually fixes (slow Docker, busy CI runners).
TRANSIENT_CREATE_ERRORS = (
    "could not find a log line that matches",
    "timed out waiting for the condition",
    "failed to init node with kubeadm",
    "error downloading",
    "TLS handshake timeout",
)


def kind_config(settings: Settings) -> dict:
    return {
        "kind": "Cluster",
        "apiVersion": "kind.x-k8s.io/v1alpha4",
        "name": settings.cluster_name,
        "nodes": [
            {
                "role": "control-plane",
                "image": settings.node_image,
                "extraPortMappings": [
                    {"containerPort": port, "hostPort": port, "listenAddress": "127.0.0.1", "protocol": "TCP"}
                    for port in (settings.http_node_port, settings.https_node_port)
                ],
            }
        ],
    }


def write_kind_config(settings: Settings, directory: Path) -> Path:
    path = directory / "kind-config.yaml"
    path.write_text(yaml.safe_dump(kind_config(settings), sort_keys=False))
    return path


def is_transient(error_output: str) -> bool:
    return any(message in error_output for message in TRANSIENT_CREATE_ERRORS)


def create_command(kind: str, settings: Settings, config: Path, kubeconfig: Path) -> list[str]:
    return [
        kind,
        "create",
        "cluster",
        f"--name={settings.cluster_name}",
        f"--config={config}",
        f"--kubeconfig={kubeconfig}",
        f"--wait={budget.KIND_CREATE}s",
    ]


def export_kubeconfig_command(kind: str, settings: Settings, kubeconfig: Path) -> list[str]:
    return [kind, "export", "kubeconfig", f"--name={settings.cluster_name}", f"--kubeconfig={kubeconfig}"]


def delete_command(kind: str, settings: Settings, kubeconfig: Path) -> list[str]:
    return [kind, "delete", "cluster", f"--name={settings.cluster_name}", f"--kubeconfig={kubeconfig}"]


def create_cluster(
    kind: str, settings: Settings, config: Path, kubeconfig: Path, attempts: int = budget.KIND_ATTEMPTS
) -> None:
    """kind create cluster, retried on known transient failures (deleting the half-made cluster in between)."""
    for attempt in range(1, attempts + 1):
        result = subprocess.run(
            create_command(kind, settings, config, kubeconfig), capture_output=True, text=True, check=False
        )
        if result.returncode == 0:
            return
        if attempt == attempts or not is_transient(result.stderr):
            raise RuntimeError(f"kind create cluster failed (attempt {attempt}):\n{result.stderr.strip()}")
        subprocess.run(delete_command(kind, settings, kubeconfig), capture_output=True, check=False)
        time.sleep(5 * attempt)
