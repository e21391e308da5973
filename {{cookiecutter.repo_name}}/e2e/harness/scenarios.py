"""contract.yaml rows -> what the e2e run does: client pods to create, the request each row makes, how to judge it."""

import re
from dataclasses import dataclass

from e2e.harness import tokens, traffic
from e2e.harness.commands import TIMED_OUT
from e2e.harness.settings import (
    CURL_IMAGE,
    HARNESS_LABEL,
    PROXY_CPU_ANNOTATION,
    RESTRICTED_CONTAINER,
    RESTRICTED_POD,
    Settings,
)
from repo_tools.contract import Newcomer, Row, caller_of
from repo_tools.mesh import Verdict
from repo_tools.resources import service_fqdn

# A server without a sidecar next to the app: a plaintext client must reach it before "no answer" from
# the app can be blamed on mutual TLS.
PLAINTEXT_CONTROL = "plaintext-control"
SERVED_BY = re.compile(r"^Request served by (\S+)$", re.MULTILINE)
# The 8-byte SSLRequest of the PostgreSQL protocol: a real database answers "S" or "N".
POSTGRES_SSL_REQUEST = r"\000\000\000\010\004\322\026\057"
CURL_NO_ANSWER = 56


@dataclass(frozen=True)
class Client:
    namespace: str
    service_account: str
    sidecar: bool

    @property
    def name(self) -> str:
        return f"client-{self.service_account}-{'mesh' if self.sidecar else 'plain'}"


@dataclass(frozen=True)
class Probe:
    """One row as a request: from the test process (client None) or from a client pod."""

    row: Row
    client: Client | None
    scheme: str = "https"
    path: str = "/"
    url: str = ""
    tcp: tuple[str, int] | None = None
    headers: tuple[tuple[str, str], ...] = ()
    # The workloads whose pods may answer a row pinned to a version (from the offline verdict's shares).
    workloads: tuple[str, ...] = ()
    token: str = tokens.NO_TOKEN  # the kind of token an internet row sends (tokens.TOKEN_KINDS), minted per request
    # The header the backend must show the token's subject in, for a row that sends a valid token ("" for none).
    subject_header: str = ""


@dataclass(frozen=True)
class Answer:
    exit_code: int
    status: int | None
    body: str
    location: str = ""


def client_for(row: Row, settings: Settings) -> Client | None:
    if row.caller == "internet":
        return None
    caller = caller_of(row, settings.gateway)
    return Client(caller.namespace, caller.service_account, caller.sidecar)


def service_port(services: dict[str, dict], to: str) -> tuple[str, int, bool]:
    """(cluster DNS name, port, is TCP) of a "name.namespace" target."""
    service = services[to]
    port = service["spec"]["ports"][0]
    return f"{to}.svc.cluster.local", port["port"], port.get("appProtocol") == "tcp"


def probe_for(
    row: Row,
    settings: Settings,
    services: dict[str, dict],
    verdict: Verdict | None = None,
    subject_header: str = "",
) -> Probe:
    """verdict: the offline one for the e2e overlay, needed by rows pinned to a version. subject_header: where the
    e2e overlay's RequestAuthentication passes a valid token's subject to the backend (tokens.TokenSettings)."""
    client = client_for(row, settings)
    request = row.request
    workloads = traffic.version_workloads(row, verdict)
    if client is None:
        return Probe(
            row,
            None,
            scheme=request.scheme,
            path=request.path,
            headers=request.headers,
            workloads=workloads,
            token=request.token,
            subject_header=subject_header if request.token == "valid" else "",
        )
    target = request.to
    if isinstance(target, Newcomer):
        target = f"{newcomer_name(target)}.{target.namespace}"
    host, port, tcp = service_port(services, str(target))
    if tcp:
        return Probe(row, client, tcp=(host, port))
    return Probe(row, client, url=f"http://{host}:{port}{request.path}", workloads=workloads)


def newcomer_name(target: Newcomer) -> str:
    """A pod the repo does not have (to test default-deny): named after its labels."""
    return "-".join(target.labels.values()) or "newcomer"


def client_command(probe: Probe) -> list[str]:
    if probe.tcp:
        host, port = probe.tcp
        return ["sh", "-c", f"printf '{POSTGRES_SSL_REQUEST}' | nc -w 3 {host} {port} | head -c 1"]
    return ["curl", "-sS", "--max-time", "5", "-w", "\n%{http_code}", probe.url]


def parse_curl(exit_code: int, output: str) -> Answer:
    """curl -w '\\n%{http_code}' puts the status on the last line."""
    body, _, status = output.rpartition("\n")
    return Answer(exit_code, int(status) if status.strip().isdigit() and int(status) else None, body)


def judge(probe: Probe, answer: Answer, settings: Settings) -> tuple[bool, str]:
    """Does the answer show the row's expected outcome? Returns (holds, what was seen)."""
    expected = probe.row.expected
    seen = f"exit {answer.exit_code}, status {answer.status}, body {answer.body[:120]!r}"
    if answer.exit_code == TIMED_OUT:
        return False, f"the probe hung and was stopped ({seen}): not an answer, retried"
    if probe.tcp:
        reached = answer.exit_code == 0 and answer.body[:1] in ("S", "N")
        holds = reached if expected.startswith("reaches ") else (expected == "denied" and not reached)
        return holds, seen
    if expected.startswith("reaches "):
        workload = expected.removeprefix("reaches ")
        served_by = SERVED_BY.search(answer.body)
        pod = served_by.group(1) if served_by else ""
        if probe.workloads:
            served = traffic.workload_of(pod, probe.workloads) is not None
            seen += f", served by {pod or 'no pod'} (expected a pod of {' or '.join(probe.workloads)})"
        else:
            served = pod.startswith(f"{workload}-")
        holds = answer.status == 200 and served
        if holds and probe.client is None:
            # Routed from the gateway: the workload's sidecar saw the gateway's mTLS identity.
            holds = f"URI=spiffe://{settings.gateway.principal}" in answer.body
        if probe.subject_header:
            # The gateway verified the token and passed its subject on (the echo server prints every header).
            line = re.compile(rf"^{re.escape(probe.subject_header)}: {re.escape(tokens.SUBJECT)}\r?$", re.I | re.M)
            holds = holds and line.search(answer.body) is not None
            seen += f", expected {probe.subject_header}: {tokens.SUBJECT}"
        return holds, seen
    if expected == "denied":
        return answer.status == 403 and "RBAC: access denied" in answer.body, seen
    if expected == "unauthenticated":
        # The gateway's JWT filter refused the token; no backend saw the request.
        return answer.status == 401 and not SERVED_BY.search(answer.body), seen
    if expected == "redirect https":
        return answer.status == 301 and answer.location.startswith(f"https://{settings.host}"), seen
    if expected == "no-answer":
        return answer.exit_code == CURL_NO_ANSWER, seen
    return False, f"the e2e suite cannot check the outcome {expected!r}"


def client_manifests(
    clients: set[Client], settings: Settings, existing_service_accounts: set[tuple[str, str]]
) -> list[dict]:
    """Namespaces, ServiceAccounts and sleeping curl pods for every caller, plus the plaintext control server."""
    docs: list[dict] = []
    known_namespaces = {settings.app_namespace, settings.gateway.namespace}
    for namespace in sorted({client.namespace for client in clients} - known_namespaces):
        labels = {"istio-injection": "enabled"}
        docs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": labels}})
    for client in sorted(clients, key=lambda c: (c.namespace, c.name)):
        if (
            client.namespace,
            client.service_account,
        ) not in existing_service_accounts and client.service_account != "default":
            docs.append(
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {"name": client.service_account, "namespace": client.namespace},
                }
            )
            existing_service_accounts = existing_service_accounts | {(client.namespace, client.service_account)}
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": client.name,
                    "namespace": client.namespace,
                    "labels": {HARNESS_LABEL: "true", "sidecar.istio.io/inject": str(client.sidecar).lower()},
                    "annotations": {PROXY_CPU_ANNOTATION: settings.proxy_cpu},
                },
                "spec": {
                    "serviceAccountName": client.service_account,
                    "securityContext": RESTRICTED_POD,
                    "containers": [
                        {
                            "name": "curl",
                            "image": CURL_IMAGE,
                            "command": ["sleep", "365d"],
                            "securityContext": RESTRICTED_CONTAINER,
                        }
                    ],
                },
            }
        )
    docs += echo_workload(
        PLAINTEXT_CONTROL, settings.app_namespace, {"app": PLAINTEXT_CONTROL}, 80, settings, sidecar=False
    )
    return docs


def plaintext_control_url(settings: Settings) -> str:
    return f"http://{service_fqdn(PLAINTEXT_CONTROL, settings.app_namespace)}/"


def newcomer_manifests(rows: list[Row], settings: Settings) -> list[dict]:
    """Echo workloads for rows that call a pod the repo does not define."""
    docs: list[dict] = []
    for row in rows:
        target = row.request.to
        if isinstance(target, Newcomer):
            docs += echo_workload(newcomer_name(target), target.namespace, target.labels, 80, settings)
    return docs


def echo_workload(
    name: str, namespace: str, labels: dict, port: int, settings: Settings, sidecar: bool = True
) -> list[dict]:
    pod_labels = labels | {HARNESS_LABEL: "true", "sidecar.istio.io/inject": str(sidecar).lower()}
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": pod_labels, "annotations": {PROXY_CPU_ANNOTATION: settings.proxy_cpu}},
                    "spec": {
                        "securityContext": RESTRICTED_POD,
                        "containers": [
                            {
                                "name": "echo",
                                "image": settings.echo_image,
                                "env": [{"name": "PORT", "value": "8080"}],
                                "ports": [{"name": "http", "containerPort": 8080}],
                                "securityContext": RESTRICTED_CONTAINER,
                            }
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "selector": labels,
                "ports": [{"name": "http", "port": port, "targetPort": "http", "appProtocol": "http"}],
            },
        },
    ]
