"""On failure: everything needed to see why, written to one directory whose path is printed."""

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from e2e.harness import commands
from e2e.harness.commands import Tools
from repo_tools.layout import IngressGateway

ISTIO_KINDS = "virtualservices,destinationrules,authorizationpolicies,peerauthentications,telemetries"
GATEWAY_KINDS = {
    True: "gateways.gateway.networking.k8s.io,httproutes,referencegrants",
    False: "gateways.networking.istio.io",
}
# With the ACME objects and Ingresses: a Challenge's status says why a certificate is still waiting.
CERT_MANAGER_KINDS = "certificates,certificaterequests,issuers,clusterissuers,orders,challenges,ingresses"
Runner = Callable[[list[str]], tuple[int, str]]


@dataclass(frozen=True)
class Capture:
    path: str  # relative to the bundle directory
    command: list[str]


def run_command(command: list[str]) -> tuple[int, str]:
    result = commands.run(command, timeout=120)
    return result.returncode, result.stdout + (f"\n--- stderr ---\n{result.stderr}" if result.stderr else "")


def captures(
    tools: Tools,
    namespaces: list[str],
    pods: list[tuple[str, str, list[str]]],
    gateway: IngressGateway,
    control_plane_namespace: str,
) -> list[Capture]:
    """What to collect. pods: (namespace, name, container names) of every pod worth its logs."""
    kubectl = lambda *args: commands.kubectl(tools, *args)  # noqa: E731
    found = [
        Capture("cluster/pods-services-events.txt", kubectl("get", "pods,svc,events", "-A", "-o", "wide")),
        Capture(
            "cluster/istio-resources.yaml",
            kubectl("get", f"{GATEWAY_KINDS[gateway.gateway_api]},{ISTIO_KINDS}", "-A", "-o", "yaml"),
        ),
        Capture("cluster/cert-manager-resources.yaml", kubectl("get", CERT_MANAGER_KINDS, "-A", "-o", "yaml")),
        Capture("logs/istiod.txt", kubectl("-n", control_plane_namespace, "logs", "deployment/istiod", "--tail=2000")),
        Capture(
            "logs/ingress-gateway.txt",
            kubectl("-n", gateway.namespace, "logs", "-l", gateway.selector, "--tail=2000", "--prefix"),
        ),
    ]
    found += [
        Capture(f"describe/{namespace}.txt", kubectl("-n", namespace, "describe", "pods")) for namespace in namespaces
    ]
    for namespace, pod, containers in pods:
        found += [
            Capture(
                f"logs/{namespace}/{pod}/{container}.txt",
                kubectl("-n", namespace, "logs", pod, "-c", container, "--tail=2000"),
            )
            for container in containers
        ]
    if tools.istioctl:
        istioctl = [tools.istioctl, f"--kubeconfig={tools.kubeconfig}"]
        found += [
            Capture("istioctl/analyze.txt", [*istioctl, "analyze", "-A"]),
            Capture("istioctl/proxy-status.txt", [*istioctl, "proxy-status"]),
        ]
    return found


def safe_name(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9._/-]", "_", path)


def collect(bundle: Path, planned: list[Capture], kind_export: list[str] | None, runner: Runner = run_command) -> Path:
    """Write every capture (and `kind export logs`) under bundle; INDEX.txt lists each command and its exit code."""
    bundle.mkdir(parents=True, exist_ok=True)
    index = []
    for capture in planned:
        target = bundle / safe_name(capture.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        exit_code, output = runner(capture.command)
        target.write_text(output)
        index.append(f"{exit_code:>3}  {capture.path}  <- {' '.join(capture.command)}")
    if kind_export:
        exit_code, output = runner([*kind_export, str(bundle / "kind")])
        index.append(f"{exit_code:>3}  kind/  <- {' '.join(kind_export)}")
    (bundle / "INDEX.txt").write_text("\n".join(index) + "\n")
    return bundle
