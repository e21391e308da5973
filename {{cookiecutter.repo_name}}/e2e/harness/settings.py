"""What the e2e run needs to know, read from the repo itself: versions, node ports, host, names."""

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from repo_tools import REPO_ROOT, VERSIONS, gateway_api, install, kustomize, layout

E2E_OVERLAY = REPO_ROOT / "apps" / "overlays" / "e2e"
INFRASTRUCTURE_OVERLAY = REPO_ROOT / "infrastructure" / "overlays" / "e2e"
GATEWAY_NODE_PORTS = REPO_ROOT / "infrastructure" / "components" / "kind-node-ports" / "gateway-nodeports.yaml"
CURL_IMAGE = "curlimages/curl:8.16.0"
PROXY_CPU_ANNOTATION = "sidecar.istio.io/proxyCPU"
HARNESS_LABEL = "e2e.harness"  # on every pod the harness adds: clients, the plaintext control, newcomers
# What the "restricted" Pod Security Standard asks of the harness's pods, which run beside the app's.
RESTRICTED_POD = {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
# A backend whose answers each request chooses: /delay/{seconds}, /status/{code}, weighted /status/200:0.7,503:0.3.
# go-httpbin v2.25.0 (https://github.com/mccutchen/go-httpbin/releases/tag/v2.25.0), non-root on distroless; it
# reads PORT, PREFIX (serve every route below a path) and MAX_DURATION (lift the 10s cap of /delay) from its
# environment (httpbin/cmd/cmd.go).
FAULT_IMAGE = "ghcr.io/mccutchen/go-httpbin:2.25.0"
# Serves the run's JWKS where the e2e overlay's RequestAuthentication fetches it (e2e/harness/tokens.py): the stable
# nginx 1.30.4 of https://github.com/nginx/docker-nginx-unprivileged (stable/alpine-slim/Dockerfile, "Updated
# mainline to 1.31.3, stable to 1.30.4"), listening on 8080 as uid 101.
JWKS_IMAGE = "nginxinc/nginx-unprivileged:1.30.4-alpine-slim"


@dataclass(frozen=True)
class Settings:
    cluster_name: str
    node_image: str
    kind_version: str
    http_node_port: int
    https_node_port: int
    host: str
    app_namespace: str
    gateway: layout.IngressGateway
    control_plane_namespace: str
    test_ca_secret: str
    certificate: str
    echo_image: str
    proxy_cpu: str


@cache
def e2e_build() -> list[dict]:
    """The e2e overlay as kustomize builds it, once per run; read it, never change it."""
    return kustomize.build(E2E_OVERLAY)


def default_cluster_name() -> str:
    """<repo directory>-e2e, as a DNS label kind accepts."""
    name = re.sub(r"[^a-z0-9-]+", "-", REPO_ROOT.name.lower()).strip("-")[:40]
    return f"{name or 'gitops'}-e2e"


def node_ports(patch: Path = GATEWAY_NODE_PORTS, e2e_docs: list[dict] | None = None) -> dict[int, int]:
    """Service port -> nodePort of the ingress gateway in the e2e environment: from the Service Istio deploys for
    the e2e overlay's Gateway (Gateway API), else from the install layer's patch of the gateway chart's Service."""
    gateway = layout.ingress_gateway()
    if gateway.gateway_api:
        deployed = gateway_api.deployed_gateway(e2e_build() if e2e_docs is None else e2e_docs, gateway)
        service = next(doc for doc in deployed if doc["kind"] == "Service")
    else:
        service = yaml.safe_load(patch.read_text())
    return {port["port"]: port["nodePort"] for port in service["spec"]["ports"] if "nodePort" in port}


def load(cluster_name: str, e2e_docs: list[dict] | None = None) -> Settings:
    """The settings of an e2e run, read from the e2e overlay (`e2e_docs`: its build, where it is at hand)."""
    docs = e2e_build() if e2e_docs is None else e2e_docs
    first_workload = next(doc for doc in docs if doc["kind"] == "Deployment")["spec"]["template"]
    issuer = next(doc for doc in docs if doc["kind"] == "Issuer" and "ca" in doc["spec"])
    certificate = next(doc for doc in docs if doc["kind"] == "Certificate" and not doc["spec"].get("isCA"))
    ports = node_ports(e2e_docs=docs)
    return Settings(
        cluster_name=cluster_name,
        node_image=VERSIONS["KIND_NODE_IMAGE"],
        kind_version=VERSIONS["KIND_VERSION"],
        http_node_port=ports[80],
        https_node_port=ports[443],
        host=layout.public_host(E2E_OVERLAY),
        app_namespace=next(doc["metadata"]["name"] for doc in docs if doc["kind"] == "Namespace"),
        gateway=layout.ingress_gateway(),
        control_plane_namespace=install.chart("istiod").namespace,
        test_ca_secret=issuer["spec"]["ca"]["secretName"],
        certificate=certificate["metadata"]["name"],
        # The test double the e2e overlay runs in place of the app's images.
        echo_image=first_workload["spec"]["containers"][0]["image"],
        # The sidecar CPU request the e2e overlay gives its pods; the harness's pods ask for the same.
        proxy_cpu=first_workload["metadata"]["annotations"][PROXY_CPU_ANNOTATION],
    )
