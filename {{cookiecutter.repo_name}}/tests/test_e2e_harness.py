"""The e2e harness's parts that need no cluster, tested for real: TLS with SNI on 127.0.0.1, retries,
the kind config, command lines, contract rows -> requests, judging answers, diagnostics and skip reasons."""

import ast
import base64
import dataclasses
import http.server
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import trustme
import yaml
from conftest import built, schema_problems
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from e2e.harness import (
    acme,
    bringup,
    budget,
    commands,
    diagnostics,
    install_plan,
    kind,
    scenarios,
    settings,
    tls,
    tokens,
    traffic,
)
from e2e.harness import gitops as harness_gitops
from e2e.harness.retry import Check, eventually
from repo_tools import (
    KUBERNETES_VERSION,
    REPO_ROOT,
    VERSIONS,
    contract,
    gitops,
    install,
    kustomize,
    layout,
    pod_security,
    renovate,
    resilience,
    review,
)
from repo_tools.mesh import Caller, Verdict
from repo_tools.schemas import schema_errors

HOST = "e2e.shop.example.com"


# --- HTTPS with SNI and verification against a local server ----------------------------------


@pytest.fixture(scope="module")
def server_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def https_server(server_ca: trustme.CA) -> Iterator[tuple[int, list[str]]]:
    """An HTTPS server on 127.0.0.1 with a certificate for HOST only; records the SNI names it is sent."""
    seen_sni: list[str] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ca.issue_cert(HOST).configure_cert(context)
    context.sni_callback = lambda _socket, name, _context: seen_sni.append(name)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            body = f"Request served by frontend-1\n\n{self.command} {self.path}\n{self.headers}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET  # noqa: N815 - the name http.server calls

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.server_address[1], seen_sni
    server.shutdown()


def ca_file(ca: trustme.CA, directory: Path) -> str:
    path = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def test_the_right_ca_and_host_pass_and_the_host_is_sent_as_sni(https_server, server_ca, tmp_path):
    port, seen_sni = https_server
    response = tls.get("https", "127.0.0.1", port, HOST, "/", ca_file(server_ca, tmp_path))
    assert response.status_code == 200
    assert f"Host: {HOST}" in response.text
    assert seen_sni[-1] == HOST


def test_a_client_trusting_another_ca_fails(https_server, tmp_path):
    port, _ = https_server
    with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        tls.get("https", "127.0.0.1", port, HOST, "/", ca_file(trustme.CA(), tmp_path))


def test_a_request_carries_its_method_and_headers_and_the_host_as_sni(https_server, server_ca, tmp_path):
    port, seen_sni = https_server
    headers = (("x-canary", "always"), ("x-request-id", "id-1"))
    response = tls.send(
        "POST", "https", "127.0.0.1", port, HOST, "/api?e2e-request=id-1", ca_file(server_ca, tmp_path), headers
    )
    assert response.text.splitlines()[2] == "POST /api?e2e-request=id-1"
    assert "x-canary: always" in response.text and "x-request-id: id-1" in response.text
    assert f"Host: {HOST}" in response.text and seen_sni[-1] == HOST


@pytest.mark.parametrize("path", ["/api/./orders", "/api//orders", "/api%2Forders", "/api/../api/orders"])
def test_a_row_path_reaches_the_gateway_verbatim_where_requests_would_resolve_it(
    https_server, server_ca, tmp_path, path
):
    port, seen_sni = https_server
    ca = ca_file(server_ca, tmp_path)
    answer = tls.send_verbatim("GET", "https", "127.0.0.1", port, HOST, path, ca, (("x-request-id", "id-2"),))
    assert answer.status == 200 and answer.text.splitlines()[2] == f"GET {path}"
    assert "x-request-id: id-2" in answer.text and f"Host: {HOST}" in answer.text and seen_sni[-1] == HOST
    resolved = tls.send("GET", "https", "127.0.0.1", port, HOST, path, ca).text.splitlines()[2]
    if "." in path:  # urllib3 resolves dot segments before sending
        assert resolved == "GET /api/orders"


def test_the_verbatim_sender_refuses_a_ca_it_was_not_given(https_server, tmp_path):
    port, _ = https_server
    with pytest.raises(ssl.SSLCertVerificationError):
        tls.send_verbatim("GET", "https", "127.0.0.1", port, HOST, "/", ca_file(trustme.CA(), tmp_path))


def test_a_host_the_certificate_does_not_name_fails(https_server, server_ca, tmp_path):
    port, _ = https_server
    with pytest.raises(requests.exceptions.SSLError, match="match|mismatch"):
        tls.get("https", "127.0.0.1", port, "other.example.com", "/", ca_file(server_ca, tmp_path))


def test_the_certificate_a_server_presents_is_read_per_name_and_a_closed_handshake_is_none(https_server):
    port, seen_sni = https_server
    certificate, _ = tls.presented_certificate("127.0.0.1", port, HOST)
    assert certificate is not None and tls.dns_names(certificate) == [HOST] and seen_sni[-1] == HOST
    other, _ = tls.presented_certificate("127.0.0.1", port, f"other.{HOST}")
    assert other is not None and f"other.{HOST}" not in tls.dns_names(other)  # presented, but not for that name
    with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts, then closes mid-handshake, as Envoy may
        closing = threading.Thread(target=lambda: listener.accept()[0].close(), daemon=True)
        closing.start()
        none, why = tls.presented_certificate("127.0.0.1", listener.getsockname()[1], f"other.{HOST}")
        closing.join()
    assert none is None and why


def test_the_ca_secret_is_what_a_cert_manager_ca_issuer_reads(server_ca):
    secret = yaml.safe_load(tls.ca_secret_manifest(server_ca, "shop-e2e-ca", "istio-system"))
    assert secret["type"] == "kubernetes.io/tls"
    assert set(secret["data"]) == {"tls.crt", "tls.key"}
    assert secret["metadata"] == {"name": "shop-e2e-ca", "namespace": "istio-system"}


# --- retries --------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_eventually_waits_for_consecutive_successes():
    answers = iter([True, False, True, True, True])
    clock = FakeClock()
    result = eventually(lambda: Check(next(answers), "x"), timeout=60, consecutive=3, clock=clock, sleep=clock.sleep)
    assert result.holds and clock.now == 4.0


def test_eventually_gives_up_with_the_last_detail():
    clock = FakeClock()
    calls = iter(range(1000))
    with pytest.raises(AssertionError, match=r"within 10s \(11 attempts\); last: attempt 10"):
        eventually(lambda: Check(False, f"attempt {next(calls)}"), timeout=10, clock=clock, sleep=clock.sleep)


# --- kind config and commands -----------------------------------------------------------------


@pytest.fixture(scope="module")
def e2e_settings() -> settings.Settings:
    return settings.load("shop-gitops-e2e")


def test_the_kind_config_maps_the_gateways_node_ports_to_localhost_only(e2e_settings):
    config = kind.kind_config(e2e_settings)
    mappings = config["nodes"][0]["extraPortMappings"]
    assert {m["containerPort"] for m in mappings} == set(settings.node_ports().values())
    assert all(m["listenAddress"] == "127.0.0.1" and m["hostPort"] == m["containerPort"] for m in mappings)


def test_the_node_image_is_pinned_to_the_repos_kubernetes_version(e2e_settings):
    assert kind.kind_config(e2e_settings)["nodes"][0]["image"] == VERSIONS["KIND_NODE_IMAGE"]
    assert VERSIONS["KIND_NODE_IMAGE"].startswith(f"kindest/node:v{KUBERNETES_VERSION}.")


def test_cluster_creation_is_retried_only_on_known_transient_failures():
    assert kind.is_transient("ERROR: failed to create cluster: could not find a log line that matches ...")
    assert not kind.is_transient("ERROR: failed to create cluster: node(s) already exist for a cluster with the name")


def test_the_commands_name_the_kubeconfig_and_let_kustomize_run_helm(tmp_path):
    tools = commands.Tools("kind", "kubectl", "/opt/helm", kubeconfig=tmp_path / "kubeconfig")
    assert commands.kubectl(tools, "get", "pods")[:2] == ["kubectl", f"--kubeconfig={tmp_path / 'kubeconfig'}"]
    render = commands.render_with_helm(tools, Path("infrastructure/overlays/e2e"))
    assert render[-3:] == ["--enable-helm", "--helm-command=/opt/helm", "infrastructure/overlays/e2e"]
    assert render[: len(kustomize.kustomize_command())] == kustomize.kustomize_command()
    assert "--server-side" in commands.apply_stdin(tools)


def test_kind_create_uses_the_written_config(tmp_path, e2e_settings):
    config = kind.write_kind_config(e2e_settings, tmp_path)
    assert yaml.safe_load(config.read_text()) == kind.kind_config(e2e_settings)
    command = kind.create_command("kind", e2e_settings, config, tmp_path / "kubeconfig")
    assert f"--config={config}" in command and f"--name={e2e_settings.cluster_name}" in command
    reuse = kind.export_kubeconfig_command("kind", e2e_settings, tmp_path / "kubeconfig")
    assert reuse[:3] == ["kind", "export", "kubeconfig"] and f"--kubeconfig={tmp_path / 'kubeconfig'}" in reuse


# --- contract rows -> requests and judgements --------------------------------------------------


@pytest.fixture(scope="module")
def services(e2e_settings) -> dict[str, dict]:
    docs = built("e2e")
    docs += scenarios.newcomer_manifests(contract.load(), e2e_settings)
    return {f"{d['metadata']['name']}.{d['metadata']['namespace']}": d for d in docs if d["kind"] == "Service"}


def test_every_contract_row_becomes_a_request(e2e_settings, services):
    for row in contract.load():
        probe = scenarios.probe_for(row, e2e_settings, services, traffic.offline_verdict(row))
        if row.caller == "internet":
            assert probe.client is None and probe.scheme in ("http", "https") and probe.path.startswith("/")
            assert probe.headers == row.request.headers and probe.token == row.request.token
        else:
            assert probe.client is not None
            assert probe.tcp or probe.url.startswith("http://") and ".svc.cluster.local:" in probe.url


def test_the_gateway_row_runs_from_a_pod_with_the_gateways_identity(e2e_settings, services):
    row = next(row for row in contract.load() if row.caller == "ingress-gateway")
    client = scenarios.probe_for(row, e2e_settings, services).client
    assert (client.namespace, client.service_account, client.sidecar) == (
        e2e_settings.gateway.namespace,
        e2e_settings.gateway.service_account,
        True,
    )


def test_a_moved_gateway_moves_the_gateway_rows_client(e2e_settings, services):
    moved = dataclasses.replace(e2e_settings, gateway=layout.IngressGateway("edge", "public-edge", "edge"))
    row = next(row for row in contract.load() if row.caller == "ingress-gateway")
    client = scenarios.probe_for(row, moved, services).client
    assert (client.namespace, client.service_account) == ("edge", "public-edge")
    pods = scenarios.client_manifests({client}, moved, set())
    assert {
        (pod["metadata"]["namespace"], pod["spec"]["serviceAccountName"]) for pod in pods if pod["kind"] == "Pod"
    } == {("edge", "public-edge")}


def test_clients_get_namespaces_service_accounts_and_the_right_injection(e2e_settings):
    clients = {
        scenarios.Client(e2e_settings.app_namespace, "intruder", True),
        scenarios.Client(e2e_settings.app_namespace, "default", True),
        scenarios.Client("elsewhere", "web", True),
        scenarios.Client(e2e_settings.app_namespace, "web", False),
    }
    docs = scenarios.client_manifests(clients, e2e_settings, {(e2e_settings.app_namespace, "web")})
    namespaces = {
        d["metadata"]["name"]: d["metadata"]["labels"]["istio-injection"] for d in docs if d["kind"] == "Namespace"
    }
    assert namespaces == {"elsewhere": "enabled"}
    control = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == scenarios.PLAINTEXT_CONTROL
    )
    assert control["metadata"]["namespace"] == e2e_settings.app_namespace
    assert control["spec"]["template"]["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"
    accounts = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs if d["kind"] == "ServiceAccount"}
    assert accounts == {(e2e_settings.app_namespace, "intruder"), ("elsewhere", "web")}
    pods = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Pod"}
    assert pods["client-web-plain"]["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"
    assert pods["client-intruder-mesh"]["spec"]["serviceAccountName"] == "intruder"


def probe(expected: str, client: bool = True, tcp: bool = False) -> scenarios.Probe:
    row = contract.Row("r", "internet" if not client else Caller("shop", "web"), contract.Request(), expected)
    who = scenarios.Client("shop", "web", True) if client else None
    return scenarios.Probe(row, who, tcp=("db.shop.svc.cluster.local", 5432) if tcp else None)


@pytest.mark.parametrize(
    ("expected", "client", "answer", "holds"),
    [
        (
            "reaches backend",
            True,
            scenarios.Answer(0, 200, "Request served by backend-7d9f-x\n\nGET /api HTTP/1.1"),
            True,
        ),
        ("reaches backend", True, scenarios.Answer(0, 200, "Request served by frontend-7d9f-x\n"), False),
        ("reaches backend", False, scenarios.Answer(0, 200, "Request served by backend-1\n"), False),
        ("denied", True, scenarios.Answer(0, 403, "RBAC: access denied"), True),
        ("denied", True, scenarios.Answer(0, 200, "Request served by backend-1"), False),
        ("no-answer", True, scenarios.Answer(56, None, ""), True),
        ("no-answer", True, scenarios.Answer(6, None, "Could not resolve host"), False),
        ("redirect https", False, scenarios.Answer(0, 301, "", "https://{host}/api"), True),
    ],
)
def test_answers_are_judged_as_the_contract_means(e2e_settings, expected, client, answer, holds):
    answer = dataclasses.replace(answer, location=answer.location.format(host=e2e_settings.host))
    assert scenarios.judge(probe(expected, client), answer, e2e_settings)[0] is holds


def test_a_routed_request_must_show_the_gateways_identity(e2e_settings):
    body = (
        f"Request served by backend-1\n\nX-Forwarded-Client-Cert: By=x;URI=spiffe://{e2e_settings.gateway.principal}\n"
    )
    assert scenarios.judge(probe("reaches backend", client=False), scenarios.Answer(0, 200, body), e2e_settings)[0]


def test_tcp_rows_are_judged_by_the_database_answer(e2e_settings):
    assert scenarios.judge(probe("reaches database", tcp=True), scenarios.Answer(0, None, "N"), e2e_settings)[0]
    assert scenarios.judge(probe("denied", tcp=True), scenarios.Answer(0, None, ""), e2e_settings)[0]


def test_curl_output_splits_into_body_and_status():
    assert scenarios.parse_curl(0, "Request served by a\n\nGET /\n403") == scenarios.Answer(
        0, 403, "Request served by a\n\nGET /"
    )
    assert scenarios.parse_curl(56, "\n000").status is None


# --- traffic policy: versions, splits, timeouts, retries, access logs ------------------------------------

STABLE = resilience.Share("backend", "backend", "stable", 75, True)
CANARY = resilience.Share("backend-canary", "backend", "canary", 25, True)


def pinned(version: str | None) -> contract.Row:
    return contract.Row(
        "r", "internet", contract.Request(), "reaches backend", contract.ExpectedTraffic(version=version)
    )


def split_verdict(*shares: resilience.Share) -> Verdict:
    return Verdict("reaches backend", "routed", resilience.Traffic(shares, None))


def test_a_pod_belongs_to_its_own_workload_only():
    assert traffic.belongs_to("backend-6c9f8d7b5-x2x7z", "backend")
    assert traffic.belongs_to("database-0", "database")
    assert not traffic.belongs_to("backend-canary-6c9f8d7b5-x2x7z", "backend")  # a prefix is not enough
    assert traffic.belongs_to("backend-canary-6c9f8d7b5-x2x7z", "backend-canary")
    assert traffic.workload_of("backend-canary-6c9f8d7b5-x2x7z", ["backend", "backend-canary"]) == "backend-canary"
    assert traffic.workload_of("e2e-fault-backend-7b8c9d-abcde", ["backend", "backend-canary"]) is None


def test_a_row_pinned_to_a_version_may_be_answered_by_that_versions_workloads_only():
    verdict = split_verdict(STABLE, CANARY)
    assert traffic.version_workloads(pinned("canary"), verdict) == ("backend-canary",)
    assert traffic.version_workloads(pinned("stable"), verdict) == ("backend",)
    assert traffic.version_workloads(pinned(None), None) == ()
    with pytest.raises(ValueError, match="no share of its route goes to that version"):
        traffic.version_workloads(pinned("canary"), split_verdict(STABLE))
    with pytest.raises(ValueError, match="pass the offline verdict"):
        traffic.version_workloads(pinned("canary"), None)


def test_every_row_pinned_to_a_version_names_workloads_the_e2e_overlay_runs():
    deployments = {doc["metadata"]["name"] for doc in built("e2e") if doc["kind"] == "Deployment"}
    pinned_rows = traffic.rows_with(contract.load(), "version")
    assert pinned_rows
    for row in pinned_rows:
        workloads = traffic.version_workloads(row, traffic.offline_verdict(row))
        assert workloads and set(workloads) <= deployments, row.name


@pytest.mark.parametrize(
    ("pod", "holds"),
    [("backend-canary-6c9f8d7b5-x2x7z", True), ("backend-6c9f8d7b5-x2x7z", False), ("", False)],
)
def test_a_pinned_version_is_judged_by_the_workload_of_the_answering_pod(e2e_settings, pod, holds):
    row = pinned("canary")
    probe = scenarios.Probe(row, scenarios.Client("shop", "web", True), workloads=("backend-canary",))
    answer = scenarios.Answer(0, 200, f"Request served by {pod}\n" if pod else "")
    held, seen = scenarios.judge(probe, answer, e2e_settings)
    assert held is holds
    assert "expected a pod of backend-canary" in seen


def test_an_internet_probe_sends_the_rows_method_and_headers(e2e_settings, monkeypatch):
    sent = {}

    def send(method: str, *args: object) -> object:
        sent.update(method=method, headers=args[-1])
        raise requests.ConnectionError("not sent")

    monkeypatch.setattr(tls, "send_verbatim", send)
    headers = (("x-canary", "always"),)
    row = contract.Row(
        "r", "internet", contract.Request(path="/api", method="POST", headers=headers), "reaches backend"
    )
    run = bringup.Bringup(commands.Tools("kind", "kubectl", "helm"), e2e_settings, [row])
    check = bringup.probe_once(run, scenarios.probe_for(row, e2e_settings, {}), "ca.pem")
    assert not check.holds and sent == {"method": "POST", "headers": headers}


def test_an_internet_probe_takes_the_rows_headers(e2e_settings):
    headers = (("x-canary", "always"),)
    row = dataclasses.replace(pinned("canary"), request=contract.Request(path="/api", headers=headers))
    probe = scenarios.probe_for(row, e2e_settings, {}, split_verdict(STABLE, CANARY))
    assert (probe.path, probe.headers, probe.workloads) == ("/api", headers, ("backend-canary",))


def test_an_observed_split_must_lie_within_the_bound_of_each_weight():
    weights = {"backend": 75, "backend-canary": 25}
    assert traffic.split_within_bound({"backend": 150, "backend-canary": 50}, weights, 200, 4.5) == []
    # 4.5 standard deviations of binomial(200, 0.25) are 27.6 requests either side of 50.
    assert traffic.split_within_bound({"backend": 123, "backend-canary": 77}, weights, 200, 4.5) == []
    too_far = traffic.split_within_bound({"backend": 100, "backend-canary": 100}, weights, 200, 4.5)
    assert len(too_far) == 2 and "backend (weight 75): 100 of 200, expected 150.0 ± 27.6" in too_far[0]
    swapped = {"backend": 25, "backend-canary": 75}
    assert len(traffic.split_within_bound({"backend": 150, "backend-canary": 50}, swapped, 200, 4.5)) == 2
    stray = traffic.split_within_bound(
        {"backend": 150, "backend-canary": 49, "other (status 503)": 1}, weights, 200, 4.5
    )
    assert stray == ["other (status 503): 1 of 200, not a workload of the split"]


def route(timeout: str | None, attempts: int, per_try: str | None, on: str) -> resilience.RoutePolicy:
    return resilience.RoutePolicy(timeout, resilience.Retries(attempts, per_try, frozenset(on.split(","))), "route")


def test_the_gateway_gives_up_at_the_route_timeout_or_at_a_per_try_timeout_it_does_not_retry():
    assert resilience.gives_up_after(route("15s", 2, "5s", "connect-failure,refused-stream,reset,503")) == 15
    # Envoy retries a timed-out try only under reset, 5xx or gateway-error: otherwise the first one ends it.
    assert resilience.gives_up_after(route("15s", 2, "5s", "connect-failure,refused-stream")) == 5
    assert resilience.gives_up_after(route("15s", 2, "4s", "5xx")) == 12
    assert (
        resilience.gives_up_after(route("15s", 2, None, "connect-failure,refused-stream,unavailable,cancelled")) == 15
    )
    assert resilience.gives_up_after(route(None, 0, None, "")) == float("inf")


def test_a_503_gets_through_as_often_as_the_retries_allow():
    assert traffic.success_probability(route("15s", 2, "5s", "reset,503"), 0.3) == pytest.approx(1 - 0.3**3)
    assert traffic.success_probability(route("15s", 2, "5s", "connect-failure,refused-stream"), 0.3) == pytest.approx(
        0.7
    )
    assert traffic.success_probability(route("15s", 0, None, ""), 0.3) == pytest.approx(0.7)
    # The bound the retries test uses separates the two: 200 GETs at 97.3% and at 70% cannot be confused.
    assert traffic.binomial_problem("GET", 140, 200, 1 - 0.3**3, 4.5)
    assert not traffic.binomial_problem("GET", 186, 200, 1 - 0.3**3, 4.5)
    assert traffic.binomial_problem("POST", 97, 100, 0.7, 4.5)


def test_access_log_lines_are_found_by_the_ids_the_test_sent():
    text = (
        '[2025-01-01T00:00:00.000Z] "GET /api/orders?e2e-request=a1 HTTP/1.1" 200 - via_upstream - "-" 0 10 3 2 '
        '"-" "python-requests" "a1" "e2e.shop.example.com" "10.0.0.5:3000"\n'
        '[2025-01-01T00:00:01.000Z] "GET /api/orders HTTP/1.1" 200 - via_upstream - "-" 0 10 3 2 "-" "-" "b2" "-" "-"\n'
        '[2025-01-01T00:00:02.000Z] "GET /healthz HTTP/1.1" 200 - via_upstream - "-" 0 10 3 2 "-" "-" "c3" "-" "-"\n'
    )
    lines = traffic.log_lines_for(["a1", "b2"], text)
    assert [line[1:25] for line in lines] == ["2025-01-01T00:00:00.000Z", "2025-01-01T00:00:01.000Z"]
    assert traffic.log_lines_for([], text) == []


def test_a_request_id_rides_in_the_query_and_a_fault_backend_serves_below_the_rows_path():
    assert traffic.tagged("/api/orders", "a1") == "/api/orders?e2e-request=a1"
    assert traffic.tagged("/api/orders?x=1", "a1") == "/api/orders?x=1&e2e-request=a1"
    assert traffic.fault_prefix("/api/orders/") == "/api/orders"
    assert traffic.fault_prefix("/") == ""


def test_a_fault_backend_takes_the_replaced_workloads_place_and_nothing_else(e2e_settings):
    live = next(
        doc
        for doc in built("e2e")
        if doc["kind"] == "Deployment" and doc["spec"]["template"]["metadata"]["labels"].get("version") == "canary"
    )
    name = traffic.fault_name(live["metadata"]["name"])
    fault = traffic.fault_deployment(live, "/api/orders", e2e_settings, replicas=2)
    template, own = fault["spec"]["template"], live["spec"]["template"]
    assert fault["metadata"] == {"name": name, "namespace": live["metadata"]["namespace"]}
    assert fault["spec"]["replicas"] == 2
    # Its pods are selected by the Service and policies of the workload, but not by the workload's own selector's owner.
    assert own["metadata"]["labels"].items() <= template["metadata"]["labels"].items()
    assert fault["spec"]["selector"]["matchLabels"] == {traffic.FAULT_LABEL: name}
    assert template["metadata"]["labels"][settings.HARNESS_LABEL] == "true"
    assert template["metadata"]["annotations"] == {settings.PROXY_CPU_ANNOTATION: e2e_settings.proxy_cpu}
    assert template["spec"]["serviceAccountName"] == own["spec"]["serviceAccountName"]
    (container,) = template["spec"]["containers"]
    port = own["spec"]["containers"][0]["ports"][0]
    assert container["image"] == settings.FAULT_IMAGE
    assert container["ports"] == [{"name": port["name"], "containerPort": port["containerPort"]}]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env == {"PORT": str(port["containerPort"]), "PREFIX": "/api/orders", "MAX_DURATION": traffic.MAX_DELAY}
    assert container["readinessProbe"]["httpGet"] == {"path": "/api/orders/status/200", "port": port["name"]}


EJECTS_AFTER_FIVE = traffic.OutlierDetection(consecutive_errors=5, base_ejection_seconds=30, max_ejection_percent=50)


def test_outlier_detection_is_read_with_the_defaults_istio_and_envoy_give():
    stated = {"consecutive5xxErrors": 5, "interval": "10s", "baseEjectionTime": "30s", "maxEjectionPercent": 50}
    assert traffic.outlier_detection({"outlierDetection": stated}) == EJECTS_AFTER_FIVE
    assert traffic.outlier_detection({"outlierDetection": {}}) == traffic.OutlierDetection(5, 30, 10)
    assert traffic.outlier_detection({"outlierDetection": {"baseEjectionTime": "1m"}}).base_ejection_seconds == 60
    # A 503 is a gateway error too: whichever count is lower ejects first; 0 turns the 5xx count off.
    gateway_errors = {"consecutive5xxErrors": 7, "consecutiveGatewayErrors": 3}
    assert traffic.outlier_detection({"outlierDetection": gateway_errors}).consecutive_errors == 3
    only_gateway = {"consecutive5xxErrors": 0, "consecutiveGatewayErrors": 4}
    assert traffic.outlier_detection({"outlierDetection": only_gateway}).consecutive_errors == 4
    assert traffic.outlier_detection({"outlierDetection": {"consecutive5xxErrors": 0}}) is None
    assert traffic.outlier_detection({"connectionPool": {"tcp": {"maxConnections": 1}}}) is None


def test_the_e2e_overlays_stable_backend_is_ejected_after_five_503s_for_30_seconds():
    docs = built("e2e")
    stable = next(
        doc
        for doc in docs
        if doc["kind"] == "Deployment" and doc["spec"]["template"]["metadata"]["labels"].get("version") == "stable"
    )
    name, namespace = stable["metadata"]["name"], stable["metadata"]["namespace"]
    detection, where = traffic.outlier_detection_towards(docs, name)
    assert (detection, where) == (EJECTS_AFTER_FIVE, f"DestinationRule {namespace}/{name}")
    with pytest.raises(ValueError, match="no workload 'nowhere'"):
        traffic.outlier_detection_towards(docs, "nowhere")


def service(name: str, namespace: str, selector: dict | None) -> dict:
    spec = {"selector": selector} if selector is not None else {}
    return {"kind": "Service", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def test_the_outlier_detection_is_the_one_of_the_service_in_front_of_the_workload():
    workload = {
        "kind": "Deployment",
        "metadata": {"name": "api", "namespace": "shop"},
        "spec": {"template": {"metadata": {"labels": {"app": "api", "version": "stable"}}}},
    }
    rule = {
        "kind": "DestinationRule",
        "metadata": {"name": "api", "namespace": "shop"},
        "spec": {"host": "api.shop.svc.cluster.local", "trafficPolicy": {"outlierDetection": {}}},
    }
    in_front = service("api", "shop", {"app": "api"})
    # Neither a Service of another namespace nor one without a selector (its endpoints are its own) stands in front.
    others = [service("api", "elsewhere", {"app": "api"}), service("external", "shop", None)]
    docs = [workload, rule, in_front, *others]
    assert traffic.outlier_detection_towards(docs, "api") == (
        traffic.OutlierDetection(5, 30, 10),
        "DestinationRule shop/api",
    )
    assert traffic.outlier_detection_towards([workload, in_front], "api") == (
        None,
        "no DestinationRule for Service shop/api",
    )
    with pytest.raises(ValueError, match="exactly one Service"):
        traffic.outlier_detection_towards([*docs, service("api-v1", "shop", {"version": "stable"})], "api")


def test_envoy_ejects_one_failing_pod_only_within_max_ejection_percent():
    assert traffic.ejectable(healthy_pods=1, max_ejection_percent=50)  # 1 of 2 pods: 50% <= 50%
    assert not traffic.ejectable(healthy_pods=1, max_ejection_percent=49)
    assert not traffic.ejectable(healthy_pods=0, max_ejection_percent=50)  # the only pod: 100%
    assert not traffic.ejectable(healthy_pods=8, max_ejection_percent=10)  # 1 of 9: 11%, Envoy's default is 10
    assert traffic.ejectable(healthy_pods=9, max_ejection_percent=10)


def test_a_route_that_retries_503_hides_the_failing_pod_from_the_client():
    assert traffic.retried_on_503(route("15s", 2, "5s", "connect-failure,refused-stream,reset,503"))
    assert traffic.retried_on_503(route("15s", 1, None, "5xx"))
    assert not traffic.retried_on_503(route("15s", 2, None, "connect-failure,refused-stream,unavailable,cancelled"))
    assert not traffic.retried_on_503(route("15s", 0, None, "503"))


def test_the_failing_pod_takes_its_share_and_enough_requests_tell_ejection_from_luck():
    # 75% to the stable version, half of it to the failing pod beside one healthy one.
    assert traffic.failure_share_while_in((STABLE, CANARY), "backend", healthy_pods=1) == pytest.approx(0.375)
    assert traffic.failure_share_while_in((STABLE, CANARY), "backend", healthy_pods=2) == pytest.approx(0.25)
    assert traffic.failure_share_while_in((STABLE,), "backend", healthy_pods=1) == pytest.approx(0.5)
    required = traffic.requests_to_tell(0.375, 1e-6)
    assert required == 30 and (1 - 0.375) ** required <= 1e-6 < (1 - 0.375) ** (required - 1)
    assert traffic.requests_to_tell(1.0, 1e-6) == 1


def test_every_e2e_route_with_a_stable_version_behind_a_circuit_breaker_can_show_an_ejection():
    """The test on kind runs, not skips, for this repo's e2e overlay: the stable backend's one pod and a failing
    one, 50% ejectable, the failing pod answering 3/8 of the requests until then."""
    live_replicas = {
        doc["metadata"]["name"]: doc["spec"].get("replicas", 1) for doc in built("e2e") if doc["kind"] == "Deployment"
    }
    internet = [row for row in contract.load() if row.caller == "internet"]
    checked = 0
    for row in traffic.rows_with(internet, "circuit_breaking"):
        verdict = traffic.offline_verdict(row)
        assert verdict.traffic is not None, row.name
        for share in verdict.traffic.shares:
            if share.version != "stable":
                continue
            detection, where = traffic.outlier_detection_towards(traffic.e2e_mesh()[0].docs, share.workload)
            assert detection is not None, where
            healthy_pods = live_replicas[share.workload]
            assert traffic.ejectable(healthy_pods, detection.max_ejection_percent), where
            failure_share = traffic.failure_share_while_in(verdict.traffic.shares, share.workload, healthy_pods)
            assert traffic.requests_to_tell(failure_share, 1e-6) == 30, row.name
            checked += 1
    assert checked


def ejection_judged(before: list[int | None], after: list[tuple[int | None, float]], required: int = 3) -> list[str]:
    return traffic.ejection_problems(before, after, EJECTS_AFTER_FIVE, 0.375, required)


def test_an_ejection_shows_as_failures_first_and_none_while_it_lasts():
    before = [200, 503, 200, 503, 503, 200, 503, 503]
    assert ejection_judged(before, [(200, 1.0), (200, 1.2), (200, 1.4)]) == []
    # Answers after the ejection's least length (30s, less the margin) may meet the pod again: not judged.
    assert ejection_judged(before, [(200, 1.0), (200, 1.2), (200, 1.4), (503, 29.0)]) == []


def test_a_failure_while_the_pod_should_be_ejected_is_a_problem():
    before = [200, 503, 200, 503, 503, 200, 503, 503]
    (problem,) = ejection_judged(before, [(200, 1.0), (503, 1.2), (None, 1.4)])
    assert problem.startswith("after the ejection: 2 of 3 requests failed ({'503': 1, 'None': 1})")
    assert "without ejection about 38% fail" in problem


def test_without_the_failures_that_eject_nothing_is_shown():
    """The control: a failing pod that never answered 5 times (not staged, not routed to) proves nothing."""
    (problem,) = ejection_judged([200] * 100, [(200, 1.0), (200, 1.2), (200, 1.4)])
    assert problem.startswith("before the ejection: 0 answers 503 in 100 requests, fewer than the 5 in a row")
    (one_short,) = ejection_judged([503, 200, 503, 503, 503] + [200] * 95, [(200, 1.0), (200, 1.2), (200, 1.4)])
    assert one_short.startswith("before the ejection: 4 answers 503 in 100 requests")
    (stray,) = ejection_judged([404, 503, 503, 503, 503, 503], [(200, 1.0), (200, 1.2), (200, 1.4)])
    assert stray == "before the ejection: answers neither kind of pod gives: {'404': 1}"


def test_too_few_answers_inside_the_ejection_are_a_problem():
    before = [503] * 5
    (problem,) = ejection_judged(before, [(200, 1.0), (200, 28.5), (200, 40.0)])
    assert problem.startswith("after the ejection: 1 of 3 requests answered within 28s of it")
    assert ejection_judged(before, [(200, 1.0), (200, 1.2)]) != []


def test_the_gitops_agent_is_paused_and_resumed_on_the_objects_it_reconciles():
    apps = ["application.argoproj.io/root", "application.argoproj.io/apps"]
    assert harness_gitops.pause_commands("argocd", apps, paused=True) == [
        ["annotate", "--overwrite", *apps, "argocd.argoproj.io/skip-reconcile=true"]
    ]
    assert harness_gitops.pause_commands("argocd", apps, paused=False) == [
        ["annotate", "--overwrite", *apps, "argocd.argoproj.io/skip-reconcile-"]
    ]
    assert harness_gitops.pause_commands("argocd", [], paused=True) == []
    assert harness_gitops.pause_commands("flux", ["kustomization.kustomize.toolkit.fluxcd.io/apps"], paused=True) == [
        ["patch", "kustomization.kustomize.toolkit.fluxcd.io/apps", "--type=merge", "-p", '{"spec": {"suspend": true}}']
    ]


# --- bring-up helpers, diagnostics, skip reasons ------------------------------------------------


def test_a_native_sidecar_counts_as_the_istio_proxy():
    pods = [
        {"metadata": {"name": "a"}, "spec": {"containers": [{"name": "app"}, {"name": "istio-proxy"}]}},
        {
            "metadata": {"name": "b"},
            "spec": {"containers": [{"name": "app"}], "initContainers": [{"name": "istio-proxy"}]},
        },
        {"metadata": {"name": "c"}, "spec": {"containers": [{"name": "app"}]}},
    ]
    assert bringup.pods_missing_proxy(pods) == ["c"]


def test_the_diagnostics_bundle_has_one_file_per_capture_and_an_index(tmp_path):
    tools = commands.Tools("kind", "kubectl", "helm", istioctl="istioctl", kubeconfig=tmp_path / "kubeconfig")
    gateway = layout.IngressGateway("edge", "edge-gateway", "edge-gateway")
    planned = diagnostics.captures(
        tools, ["shop"], [("shop", "backend-1", ["backend", "istio-proxy"])], gateway, "mesh"
    )
    ran: list[list[str]] = []

    def runner(command: list[str]) -> tuple[int, str]:
        ran.append(command)
        return (1 if "analyze" in command else 0), f"output of {command[1]}"

    bundle = diagnostics.collect(tmp_path / "bundle", planned, ["kind", "export", "logs", "--name=x"], runner)
    files = {str(path.relative_to(bundle)) for path in bundle.rglob("*") if path.is_file()}
    assert {
        "INDEX.txt",
        "cluster/pods-services-events.txt",
        "cluster/istio-resources.yaml",
        "cluster/cert-manager-resources.yaml",
        "describe/shop.txt",
        "logs/istiod.txt",
        "logs/ingress-gateway.txt",
        "logs/shop/backend-1/istio-proxy.txt",
        "istioctl/analyze.txt",
        "istioctl/proxy-status.txt",
    } <= files
    assert ran[-1] == ["kind", "export", "logs", "--name=x", str(bundle / "kind")]
    assert any(command[-4:] == ["-l", "istio=edge-gateway", "--tail=2000", "--prefix"] for command in ran)
    assert next(c for c in ran if "--prefix" in c)[2:5] == ["-n", "edge", "logs"]
    assert next(c for c in ran if "deployment/istiod" in c)[2:6] == ["-n", "mesh", "logs", "deployment/istiod"]
    assert "  1  istioctl/analyze.txt" in (bundle / "INDEX.txt").read_text()


def test_the_skip_reason_names_every_missing_tool_and_a_stopped_engine():
    def which(found: set[str]):
        return lambda name: f"/usr/bin/{name}" if name in found else None

    engine_down = lambda: (1, "Cannot connect to the Docker daemon at unix:///var/run/docker.sock")  # noqa: E731
    engine_up = lambda: (0, "Server Version: 27")  # noqa: E731
    none_given = {"kind": None, "kubectl": None, "helm": None}
    everything = {"docker", "kind", "kubectl", "helm"}
    assert bringup.missing_prerequisites(which(everything), engine_up, none_given) == ""
    assert bringup.missing_prerequisites(which(set()), engine_up, none_given).startswith(
        "e2e needs `docker`, `kind`, `kubectl`, `helm` on PATH"
    )
    assert "Cannot connect to the Docker daemon" in bringup.missing_prerequisites(
        which(everything), engine_down, none_given
    )
    assert bringup.missing_prerequisites(which(everything - {"helm"}), engine_up, none_given).startswith(
        "e2e needs `helm` on PATH"
    )
    assert bringup.missing_prerequisites(which(everything - {"helm"}), engine_up, none_given | {"helm": "/h"}) == ""
    assert bringup.missing_prerequisites(which(everything), engine_up, none_given, gitops=True).startswith(
        "e2e needs `git` on PATH"
    )
    assert bringup.missing_prerequisites(which(everything | {"git"}), engine_up, none_given, gitops=True) == ""


def test_on_ci_a_missing_tool_fails_the_run_and_elsewhere_skips_it():
    assert bringup.unavailable("e2e needs `kind`", {}) == ("skip", "e2e needs `kind`")
    assert bringup.unavailable("e2e needs `kind`", {"CI": "true"}) == ("fail", "e2e needs `kind`")
    assert bringup.unavailable("e2e needs `kind`", {"CI": "1"})[0] == "fail"
    assert bringup.unavailable("e2e needs `kind`", {"CI": "false"})[0] == "skip"


@pytest.mark.bake_independent
def test_a_hung_probe_is_a_failed_answer_never_a_denial_nor_a_crash(e2e_settings):
    result = commands.run([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
    assert result.returncode == commands.TIMED_OUT and "timed out after" in result.stderr
    denied = probe("denied", tcp=True)
    assert scenarios.judge(denied, scenarios.Answer(7, None, ""), e2e_settings)[0]  # refused: a denial
    assert not scenarios.judge(denied, scenarios.Answer(result.returncode, None, result.stdout), e2e_settings)[0]


def test_a_kind_release_other_than_the_pinned_one_is_named():
    assert bringup.version_mismatch("kind v0.33.1 go1.24 linux/amd64", "v0.33.0") == ""
    assert "is not the pinned v0.33.0" in bringup.version_mismatch("kind v0.29.0 go1.24 linux/amd64", "v0.33.0")


# --- the run's token authority and its JWKS server ------------------------------------------------

ISSUER = "https://tokens.e2e.test"
JWKS_URI = "http://jwks.e2e-tokens.svc.cluster.local:8080/jwks.json"


@pytest.fixture(scope="module")
def authority() -> tokens.Authority:
    return tokens.Authority.generate()


def unpadded(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def verified_claims(token: str, jwks: dict) -> tuple[dict, dict]:
    """(header, claims) of an RS256 JWT whose signature a key of the JWKS verifies, found by its kid; raises
    InvalidSignature otherwise. Written from RFC 7515/7518 with cryptography alone, not with the harness's code."""
    header_part, claims_part, signature = token.split(".")
    header = json.loads(unpadded(header_part))
    key = next(key for key in jwks["keys"] if key["kid"] == header["kid"])
    assert (header["alg"], key["kty"], key["alg"], key["use"]) == ("RS256", "RSA", "RS256", "sig")
    public = rsa.RSAPublicNumbers(
        int.from_bytes(unpadded(key["e"]), "big"), int.from_bytes(unpadded(key["n"]), "big")
    ).public_key()
    signing_input = f"{header_part}.{claims_part}".encode()
    public.verify(unpadded(signature), signing_input, padding.PKCS1v15(), hashes.SHA256())
    return header, json.loads(unpadded(claims_part))


def test_the_jwks_holds_the_public_half_of_the_signing_key_as_rs256_sig(authority):
    (key,) = authority.jwks()["keys"]
    numbers = authority.key.public_key().public_numbers()
    assert int.from_bytes(unpadded(key["n"]), "big") == numbers.n and key["e"] == "AQAB"
    assert authority.key.key_size == 2048 and "=" not in key["n"]
    assert key["kid"] == authority.kid and key["kid"] != tokens.thumbprint(authority.forger.public_key())
    assert "d" not in key and "p" not in key  # no private part is served


def test_a_valid_token_verifies_against_the_jwks_with_the_issuer_and_ten_minutes_to_run(authority):
    now = int(time.time())
    header, claims = verified_claims(authority.token("valid", ISSUER, now), authority.jwks())
    assert header["kid"] == authority.kid
    assert (claims["iss"], claims["sub"], claims["iat"], claims["exp"]) == (ISSUER, "e2e-client", now, now + 600)


def test_an_expired_token_verifies_but_ran_out_ten_minutes_ago(authority):
    now = int(time.time())
    _, claims = verified_claims(authority.token("expired", ISSUER, now), authority.jwks())
    assert claims["iss"] == ISSUER and claims["exp"] == now - 600 and claims["iat"] < claims["exp"]


def test_a_forged_token_claims_the_same_kid_and_claims_but_fails_verification(authority):
    now = int(time.time())
    forged = authority.token("forged", ISSUER, now)
    header = json.loads(unpadded(forged.split(".")[0]))
    claims = json.loads(unpadded(forged.split(".")[1]))
    assert header["kid"] == authority.kid and (claims["iss"], claims["exp"]) == (ISSUER, now + 600)
    with pytest.raises(InvalidSignature):
        verified_claims(forged, authority.jwks())


def test_a_token_of_another_issuer_is_signed_with_the_real_key(authority):
    _, claims = verified_claims(authority.token("other-issuer", ISSUER, int(time.time())), authority.jwks())
    assert claims["iss"] == "https://elsewhere.e2e.test" != ISSUER and claims["sub"] == "e2e-client"


def test_a_row_without_a_token_sends_no_authorization_header_and_an_unknown_kind_is_refused(authority):
    assert tokens.authorization("none", authority, ISSUER, 0) == ()
    ((name, value),) = tokens.authorization("valid", authority, ISSUER, int(time.time()))
    assert name == "Authorization" and value.startswith("Bearer ")
    assert verified_claims(value.removeprefix("Bearer "), authority.jwks())[1]["iss"] == ISSUER
    with pytest.raises(ValueError, match="no token of kind 'stolen'"):
        authority.token("stolen", ISSUER, 0)


def request_authentication(rule: dict, name: str = "api-tokens") -> dict:
    return {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication", "metadata": {"name": name}} | {
        "spec": {"jwtRules": [rule]}
    }


def test_the_token_settings_are_read_from_the_overlays_request_authentication():
    rule = {
        "issuer": ISSUER,
        "jwksUri": JWKS_URI,
        "outputClaimToHeaders": [{"header": "x-jwt-subject", "claim": "sub"}],
    }
    docs = [{"kind": "Namespace", "metadata": {"name": "shop"}}, request_authentication(rule)]
    assert tokens.token_settings(docs) == tokens.TokenSettings(ISSUER, JWKS_URI, "x-jwt-subject")
    without_header = request_authentication({"issuer": ISSUER, "jwksUri": JWKS_URI})
    assert tokens.token_settings([without_header]).subject_header == ""
    with pytest.raises(ValueError, match="the e2e overlay builds no RequestAuthentication 'api-tokens'"):
        tokens.token_settings([request_authentication(rule, name="other")])
    with pytest.raises(ValueError, match=r"has no spec.jwtRules\[0\].jwksUri: the e2e harness needs both"):
        tokens.token_settings([request_authentication({"issuer": ISSUER})])


def test_the_harness_serves_and_signs_for_what_the_e2e_overlay_names():
    served = tokens.overlay_token_settings()
    offline = layout.api_tokens(layout.overlays()["e2e"])
    assert (served.issuer, served.jwks_uri) == (offline.issuer, offline.jwks_uri)
    assert served.subject_header


@pytest.mark.parametrize(
    ("uri", "location"),
    [
        (JWKS_URI, tokens.JwksLocation("e2e-tokens", "jwks", 8080, "/jwks.json")),
        (
            "http://keys.auth.svc/.well-known/jwks.json",
            tokens.JwksLocation("auth", "keys", 80, "/.well-known/jwks.json"),
        ),
    ],
)
def test_the_jwks_uri_names_the_service_that_serves_it(uri, location):
    assert tokens.jwks_location(uri) == location


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("https://jwks.e2e-tokens.svc.cluster.local/jwks.json", "plain http"),
        ("http://tokens.example.com/jwks.json", "<service>.<namespace>.svc.cluster.local"),
        ("http://jwks.svc.cluster.local/jwks.json", "<service>.<namespace>.svc.cluster.local"),
        ("http://jwks.e2e-tokens.svc.cluster.local:8080/", "must name a file"),
    ],
)
def test_a_jwks_uri_the_harness_cannot_serve_is_named(uri, problem):
    with pytest.raises(ValueError, match=f"jwksUri '{uri}' is not one the e2e harness can serve: .*{problem}"):
        tokens.jwks_location(uri)


def test_the_jwks_server_is_nginx_unprivileged_without_a_sidecar_serving_the_jwks_at_the_uri(authority, e2e_settings):
    location = tokens.jwks_location(JWKS_URI)
    docs = tokens.jwks_server_manifests(location, authority.jwks(), e2e_settings.proxy_cpu)
    by_kind = {doc["kind"]: doc for doc in docs}
    assert [doc["kind"] for doc in docs] == ["Namespace", "ConfigMap", "Deployment", "Service"]
    assert by_kind["Namespace"]["metadata"] == {"name": "e2e-tokens", "labels": {"istio-injection": "disabled"}}
    assert {doc["metadata"].get("namespace", "e2e-tokens") for doc in docs} == {"e2e-tokens"}
    assert json.loads(by_kind["ConfigMap"]["data"]["jwks.json"]) == authority.jwks()
    template = by_kind["Deployment"]["spec"]["template"]
    assert template["metadata"]["labels"][settings.HARNESS_LABEL] == "true"
    assert template["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"
    assert template["metadata"]["annotations"][settings.PROXY_CPU_ANNOTATION] == e2e_settings.proxy_cpu
    (container,) = template["spec"]["containers"]
    assert container["image"] == settings.JWKS_IMAGE and container["image"].startswith("nginxinc/nginx-unprivileged:")
    assert container["ports"] == [{"name": "http", "containerPort": 8080}]
    assert container["volumeMounts"][0]["mountPath"] == "/usr/share/nginx/html"
    assert template["spec"]["volumes"][0]["configMap"]["name"] == by_kind["ConfigMap"]["metadata"]["name"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/jwks.json"
    service = by_kind["Service"]
    assert (
        service["metadata"]["name"] == "jwks"
        and service["spec"]["selector"] == by_kind["Deployment"]["spec"]["selector"]["matchLabels"]
    )
    assert service["spec"]["ports"][0] == {"name": "http", "port": 8080, "targetPort": "http", "appProtocol": "http"}


def test_a_jwks_below_a_directory_is_mounted_there_and_a_new_key_rolls_the_pod(authority, e2e_settings):
    location = tokens.JwksLocation("auth", "keys", 80, "/.well-known/jwks.json")
    docs = tokens.jwks_server_manifests(location, authority.jwks(), e2e_settings.proxy_cpu)
    configmap, deployment = (
        next(doc for doc in docs if doc["kind"] == wanted) for wanted in ("ConfigMap", "Deployment")
    )
    assert list(configmap["data"]) == ["jwks.json"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["volumeMounts"][0]["mountPath"] == "/usr/share/nginx/html/.well-known"
    other = tokens.jwks_server_manifests(location, tokens.Authority.generate().jwks(), e2e_settings.proxy_cpu)
    annotations = [
        next(doc for doc in found if doc["kind"] == "Deployment")["spec"]["template"]["metadata"]["annotations"]
        for found in (docs, other)
    ]
    assert annotations[0] != annotations[1]


def test_renovate_keeps_the_jwks_servers_image_current():
    pins = {pin.name: pin for pin in renovate.pins() if pin.where == "e2e/harness/settings.py"}
    image, tag = settings.JWKS_IMAGE.split(":")
    assert pins[image].version == tag


def run_calls(statements: list[ast.stmt]) -> list[str]:
    """The names of the `run.<method>(...)` calls among the statements, in source order."""
    calls = [
        (node.lineno, node.col_offset, node.func.attr)
        for statement in statements
        for node in ast.walk(statement)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "run"
    ]
    return [name for _, _, name in sorted(calls)]


def test_the_jwks_is_served_before_anything_applies_the_apps_layer():
    """istiod fetches the jwksUri when it first pushes the RequestAuthentication, and keeps a failure a while."""
    tree = ast.parse((REPO_ROOT / "e2e" / "conftest.py").read_text())
    branch = next(node for node in ast.walk(tree) if isinstance(node, ast.If) and "gitops" in ast.unparse(node.test))
    with_gitops, with_overlays = run_calls(branch.body), run_calls(branch.orelse)
    assert with_gitops.index("serve_jwks") < with_gitops.index("sync_with_gitops")
    assert with_overlays.index("serve_jwks") < with_overlays.index("install_apps")


def token_probe(expected: str, token: str = "valid", subject_header: str = "") -> scenarios.Probe:
    row = contract.Row("r", "internet", contract.Request(path="/api", token=token), expected)
    return scenarios.Probe(row, None, path="/api", token=token, subject_header=subject_header)


@pytest.mark.parametrize(
    ("expected", "answer", "holds"),
    [
        ("unauthenticated", scenarios.Answer(0, 401, "Jwt is expired"), True),
        ("unauthenticated", scenarios.Answer(0, 401, "Jwt issuer is not configured"), True),
        ("unauthenticated", scenarios.Answer(0, 403, "RBAC: access denied"), False),
        ("unauthenticated", scenarios.Answer(0, 200, "Request served by backend-7d9f-x\n"), False),
        ("unauthenticated", scenarios.Answer(0, 401, "Request served by backend-7d9f-x\n"), False),  # the app's 401
        ("denied", scenarios.Answer(0, 403, "RBAC: access denied"), True),
        ("denied", scenarios.Answer(0, 401, "Jwt verification fails"), False),
        ("denied", scenarios.Answer(0, 403, "Forbidden"), False),
    ],
)
def test_a_token_row_is_judged_by_the_gateways_answer(e2e_settings, expected, answer, holds):
    assert scenarios.judge(token_probe(expected, "expired"), answer, e2e_settings)[0] is holds


@pytest.mark.parametrize(
    ("header_line", "holds"),
    [("X-Jwt-Subject: e2e-client", True), ("X-Jwt-Subject: someone-else", False), ("", False)],
)
def test_a_valid_tokens_subject_must_reach_the_backend(e2e_settings, header_line, holds):
    body = (
        f"Request served by backend-6c9f8d7b5-x2x7z\n\nGET /api HTTP/1.1\n{header_line}\n"
        f"X-Forwarded-Client-Cert: By=x;URI=spiffe://{e2e_settings.gateway.principal}\n"
    )
    probe = token_probe("reaches backend", subject_header="x-jwt-subject")
    held, seen = scenarios.judge(probe, scenarios.Answer(0, 200, body), e2e_settings)
    assert held is holds and "expected x-jwt-subject: e2e-client" in seen


def test_only_a_row_sending_a_valid_token_expects_its_subject_at_the_backend(e2e_settings):
    for token, header in (("valid", "x-jwt-subject"), ("expired", ""), ("none", "")):
        row = contract.Row("r", "internet", contract.Request(path="/api", token=token), "reaches backend")
        probe = scenarios.probe_for(row, e2e_settings, {}, subject_header="x-jwt-subject")
        assert (probe.token, probe.subject_header) == (token, header)


def test_an_internet_probe_sends_a_fresh_token_of_the_rows_kind(e2e_settings, monkeypatch):
    sent: list[tuple[tuple[str, str], ...]] = []

    def send(method: str, *args: object) -> object:
        sent.append(args[-1])  # type: ignore[arg-type]
        raise requests.ConnectionError("not sent")

    monkeypatch.setattr(tls, "send_verbatim", send)
    run = bringup.Bringup(commands.Tools("kind", "kubectl", "helm"), e2e_settings, [])
    issuer = tokens.overlay_token_settings().issuer
    for token in ("valid", "forged", "none"):
        headers = (("x-canary", "always"),)
        row = contract.Row("r", "internet", contract.Request(path="/api", headers=headers, token=token), "denied")
        bringup.probe_once(run, scenarios.probe_for(row, e2e_settings, {}), "ca.pem")
    valid, forged, none = sent
    assert none == (("x-canary", "always"),)
    assert valid[0] == forged[0] == ("x-canary", "always") and valid[1][0] == "Authorization"
    assert verified_claims(valid[1][1].removeprefix("Bearer "), run.authority.jwks())[1]["iss"] == issuer
    with pytest.raises(InvalidSignature):
        verified_claims(forged[1][1].removeprefix("Bearer "), run.authority.jwks())


# --- the suite as pytest sees it -------------------------------------------------------------------


def run_pytest(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


@pytest.mark.answer_independent
def test_the_e2e_suite_collects_one_test_per_contract_row_and_per_bring_up_and_acme_check():
    result = run_pytest("--collect-only", "-q", "e2e")
    collected = [line for line in result.stdout.splitlines() if "::" in line]
    rows = [line for line in collected if "test_contract.py::test_row[" in line]
    # A row past one of the gateway's limits needs a burst or an oversized request: test_edge_limits.py sends those,
    # and checks the gateway's access log once.
    past_a_limit = [row for row in contract.load() if row.request.exceeds]
    assert len(rows) == len(contract.load()) - len(past_a_limit)
    assert len([line for line in collected if "test_edge_limits.py::" in line]) == len(past_a_limit) + 1 > 1
    assert len([line for line in collected if "test_bringup.py::" in line]) == 7
    assert len([line for line in collected if "test_tls_acme.py::" in line]) == 2
    internet = [row for row in contract.load() if row.caller == "internet"]
    kinds = ("split", "version", "timeout", "retries")
    # One test per row of each kind, and one outlier-detection test for the rows' circuit breaking.
    expected_traffic_tests = sum(len(traffic.rows_with(internet, kind)) for kind in kinds) + 1
    assert len([line for line in collected if "test_traffic_policy.py::" in line]) == expected_traffic_tests > 1
    assert collected[-1].startswith("e2e/test_tls_acme.py::")  # it switches the Gateway's certificate: last


@pytest.mark.answer_independent
def test_without_docker_every_e2e_test_skips_and_says_why(tmp_path):
    result = run_pytest("-rs", "e2e", env={"PATH": str(tmp_path), "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stdout[-2000:]
    assert "e2e needs `docker`, `kind`, `kubectl`, `helm` on PATH" in result.stdout
    final = result.stdout.strip().splitlines()[-1]
    assert "skipped" in final and " passed" not in final and "failed" not in final, final
    rows = len(contract.load())
    assert f"contract rows: 0 passed, 0 failed, {rows} skipped" in result.stdout  # each row counted, as skipped


@pytest.mark.answer_independent
def test_with_ci_set_and_no_docker_the_e2e_run_fails_naming_the_tool(tmp_path):
    result = run_pytest("-rs", "e2e", env={"PATH": str(tmp_path), "HOME": str(tmp_path), "CI": "true"})
    assert result.returncode == 1, result.stdout[-2000:]
    assert "e2e needs `docker`, `kind`, `kubectl`, `helm` on PATH" in result.stdout
    summary = result.stdout.strip().splitlines()[-1]
    assert "error" in summary and "skipped" not in summary, summary


def test_the_ci_workflow_matches_the_github_workflow_schema():
    workflow = REPO_ROOT / ".github" / "workflows" / "ci.yml"
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(workflow)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_pull_requests_get_the_change_review_in_the_summary_and_one_updated_comment():
    job = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / "ci.yml").read_text())["jobs"]["change-review"]
    assert job["permissions"]["pull-requests"] == "write"
    steps = {step.get("name", step.get("uses", step.get("run"))): step for step in job["steps"]}
    review_step = steps["Review the change"]["run"]
    assert '[ "$(head -n 1 review.md)" = "<!-- repo-tools-diff -->" ]' in review_step
    assert {"azure/setup-kubectl", "azure/setup-helm"} <= {name.split("@")[0] for name in steps}
    assert 'python -m repo_tools diff "origin/${GITHUB_BASE_REF}" --markdown > review.md' in review_step
    assert 'cat review.md >> "$GITHUB_STEP_SUMMARY"' in review_step
    comment = steps["Comment on the pull request"]["run"]
    assert f'startswith("{review.MARKER}")' in comment and "--method PATCH" in comment
    assert "sed '/^#### /,$d' review.md" in comment and "-F body=@comment.md" in comment
    assert steps["Fail when a contract row broke"]["if"] == "steps.review.outputs.status == '2'"


def test_the_ci_workflow_runs_the_e2e_session_and_keeps_its_diagnostics():
    workflow = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / "ci.yml").read_text())
    steps = workflow["jobs"]["e2e"]["steps"]
    assert [entry["install"] for entry in workflow["jobs"]["e2e"]["strategy"]["matrix"]["include"]] == [
        "overlays",
        "gitops",
    ]
    run = next(step["run"] for step in steps if "nox -s e2e" in step.get("run", ""))
    assert "matrix.install == 'gitops' && '--gitops'" in run
    upload = next(step for step in steps if step.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "failure()" and upload["with"]["path"] == "e2e-diagnostics/"


def test_each_e2e_job_may_run_as_long_as_the_harness_may_wait_plus_its_tests():
    """The job's timeout is the sum of every wait the bring-up declares along its install path (the GitOps agent's
    convergence included), the tests and the runner's setup: never shorter, and not far longer."""
    job = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / "ci.yml").read_text())["jobs"]["e2e"]
    assert job["timeout-minutes"] == "${{ matrix.timeout-minutes }}"
    given = {entry["install"]: entry["timeout-minutes"] for entry in job["strategy"]["matrix"]["include"]}
    paths = install_plan.install_paths(settings.load("budget-test"))
    assert set(given) == set(paths)
    for name, path in paths.items():
        needed = budget.job_minutes(path)
        assert needed <= given[name] <= needed + 10, (
            f"{name}: the job may run {given[name]} min, its waits sum to {needed}"
        )
    gitops_path = paths["gitops"]
    assert budget.bring_up_seconds(gitops_path) >= budget.GITOPS_CONVERGENCE + budget.AGENT_READY
    assert budget.job_minutes(gitops_path) > 45  # the figure the job had, shorter than the convergence wait alone


def test_the_harness_names_the_gateway_and_control_plane_only_through_the_repos_settings():
    literals = ("istio-system", "ingressgateway")
    found = [
        f"{path.relative_to(REPO_ROOT)}: {literal}"
        for path in sorted((REPO_ROOT / "e2e").rglob("*.py"))
        for literal in literals
        if literal in path.read_text()
    ]
    assert found == []


# --- ACME from Pebble on kind --------------------------------------------------------------------


def test_the_acme_run_uses_the_repos_own_issuer_pointed_at_pebble(e2e_settings):
    issuer, certificate = acme.issuer_and_certificate(e2e_settings)
    repo_issuer = next(
        doc for doc in kustomize.build(acme.ACME_OVERLAY) if doc["kind"] == "Issuer" and "acme" in doc["spec"]
    )
    assert issuer["spec"]["acme"]["solvers"] == repo_issuer["spec"]["acme"]["solvers"]
    assert issuer["spec"]["acme"]["server"] == acme.directory_url() != repo_issuer["spec"]["acme"]["server"]
    assert certificate["spec"]["dnsNames"] == [e2e_settings.host]
    assert issuer["metadata"]["namespace"] == certificate["metadata"]["namespace"] == e2e_settings.gateway.namespace


def test_the_acme_run_passes_the_offline_challenge_rule(e2e_settings, gateway):
    docs = built("e2e") + acme.issuer_and_certificate(e2e_settings)
    mesh_config = install.chart("istiod").values.get("meshConfig") or {}
    assert gitops.acme_http01_challenges_are_served(docs, install.plain_resources(), mesh_config, gateway) == []


def test_pebble_resolves_every_name_to_the_gateway_and_validates_on_port_80(e2e_settings):
    docs = acme.manifests(e2e_settings, "10.96.0.80")
    assert schema_problems(docs) == []
    dns = next(doc for doc in docs if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "pebble-dns")
    args = dns["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("-defaultIPv4") + 1] == "10.96.0.80" and args[args.index("-defaultIPv6") + 1] == ""
    config = next(doc for doc in docs if doc["kind"] == "ConfigMap")
    assert json.loads(config["data"]["pebble-config.json"])["pebble"]["httpPort"] == 80


KIND_COREFILE = """.:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    forward . /etc/resolv.conf
    cache 30
    loop
    reload
    loadbalance
}
"""


def test_the_e2e_host_resolves_to_the_gateway_inside_the_cluster_once(e2e_settings):
    target = "istio-ingressgateway.istio-system.svc.cluster.local"
    patched = acme.corefile_resolving(KIND_COREFILE, e2e_settings.host, target)
    assert patched.splitlines()[1] == f"    rewrite name exact {e2e_settings.host} {target}"
    assert acme.corefile_resolving(patched, e2e_settings.host, target) == patched
    assert "reload" in patched  # CoreDNS picks the change up without a restart
    with pytest.raises(ValueError, match="no '.:53 {' server block"):
        acme.corefile_resolving("example.org:53 {\n}\n", e2e_settings.host, target)


# --- The GitOps run: a snapshot served over Git, the agent's install, convergence ----------------------


@pytest.mark.answer_independent
def test_the_gitops_agent_pulls_a_snapshot_of_this_repo_over_smart_http(tmp_path):
    configured_url, branch = harness_gitops.configured_source()
    served_url = "http://172.18.0.1:8418/"
    replacements = {configured_url: served_url} if configured_url else {}
    snapshot = harness_gitops.snapshot(REPO_ROOT, tmp_path / "snapshot", replacements, branch)
    with harness_gitops.serve(snapshot, host="127.0.0.1") as port:
        # Flux's source-controller (go-git) speaks only the smart protocol; Argo CD's git would fall back to dumb.
        refs = requests.get(f"http://127.0.0.1:{port}/info/refs?service=git-upload-pack", timeout=10)
        assert refs.headers["Content-Type"] == "application/x-git-upload-pack-advertisement"
        push = requests.get(f"http://127.0.0.1:{port}/info/refs?service=git-receive-pack", timeout=10)
        assert push.headers.get("Content-Type") != "application/x-git-receive-pack-advertisement"
        clone = tmp_path / "clone"
        subprocess.run(
            ["git", "clone", "-q", "--branch", branch, f"http://127.0.0.1:{port}/", str(clone)],
            check=True,
            capture_output=True,
        )
    assert (clone / "contract.yaml").read_text() == (REPO_ROOT / "contract.yaml").read_text()
    assert not (clone / ".venv").exists() and not (clone / "e2e" / "__pycache__").exists()
    entry_point = clone / "clusters" / install.gitops_tool() / harness_gitops.E2E_ENVIRONMENT
    if install.gitops_tool() == "argocd":
        docs = kustomize.build(entry_point) + kustomize.build(entry_point / "applications")
        sources = {doc["spec"]["source"]["repoURL"] for doc in docs if doc["kind"] == "Application"}
        allowed = {repo for doc in docs if doc["kind"] == "AppProject" for repo in doc["spec"]["sourceRepos"]}
        assert sources == allowed == {served_url}
        assert configured_url not in (clone / "clusters" / "argocd" / "project" / "project.yaml").read_text()
    else:
        source = harness_gitops.flux_source(served_url, branch)
        assert schema_errors(source) == []
        kustomizations = gitops.entry_point_documents(entry_point)
        assert {doc["spec"]["sourceRef"]["name"] for doc in kustomizations} == {source["metadata"]["name"]}


def test_the_gitops_agent_is_installed_from_its_pinned_release():
    url = harness_gitops.agent_manifests_url(install.gitops_tool())
    pinned = VERSIONS["ARGOCD_VERSION" if install.gitops_tool() == "argocd" else "FLUX_VERSION"]
    assert url.startswith("https://") and f"/{pinned}/" in url and url.endswith("/install.yaml")


def test_flux_is_installed_with_the_three_controllers_the_entry_points_use():
    controllers = [*harness_gitops.FLUX_CONTROLLERS, "notification-controller", "image-reflector-controller"]
    published = yaml.safe_dump_all(
        [{"kind": "CustomResourceDefinition", "metadata": {"name": "helmreleases.helm.toolkit.fluxcd.io"}}]
        + [{"kind": "Deployment", "metadata": {"name": name}} for name in controllers]
    )
    kept = harness_gitops.agent_manifests("flux", published)
    assert [doc["metadata"]["name"] for doc in kept if doc["kind"] == "Deployment"] == list(
        harness_gitops.FLUX_CONTROLLERS
    )
    assert len(kept) == 4
    assert len(harness_gitops.agent_manifests("argocd", published)) == len(controllers) + 1


def test_the_entry_point_is_applied_under_a_field_manager_of_its_own():
    tools = commands.Tools(kind="kind", kubectl="kubectl", helm="helm")
    command = commands.apply_stdin(tools, harness_gitops.ENTRY_POINT_FIELD_MANAGER, "argocd")
    assert command[2:4] == ["-n", "argocd"] and "--field-manager=e2e-entry-point" in command


def test_the_runner_is_reached_at_the_ipv4_gateway_of_kinds_network():
    assert harness_gitops.ipv4_gateway("fc00:f853:ccd:e793::1 172.18.0.1 ") == "172.18.0.1"
    with pytest.raises(RuntimeError, match="no IPv4 gateway"):
        harness_gitops.ipv4_gateway("fc00:f853:ccd:e793::1")


def application(name: str, sync: str, health: str, phase: str | None = None) -> dict:
    status: dict = {"sync": {"status": sync}, "health": {"status": health}}
    if phase:
        status["operationState"] = {"phase": phase, "message": "waiting for healthy state of apps/Deployment/x"}
    return {"metadata": {"name": name}, "status": status}


def test_argo_cd_has_converged_only_when_every_application_is_synced_healthy_and_its_sync_succeeded():
    names = ["shop-e2e", "shop-e2e-infrastructure", "shop-e2e-apps"]
    done = [application(name, "Synced", "Healthy", "Succeeded") for name in names]
    assert harness_gitops.converged("argocd", done, names).done
    between_waves = [*done[:2], application("shop-e2e-apps", "Synced", "Healthy", "Running")]
    state = harness_gitops.converged("argocd", between_waves, names)
    assert not state.done and "shop-e2e-apps: Synced, Healthy, sync Running" in state.status
    state = harness_gitops.converged("argocd", done[:2], names)
    assert not state.done and state.status == "shop-e2e-apps: not created yet"
    degraded = [*done[:2], application("shop-e2e-apps", "Synced", "Degraded")]
    assert not harness_gitops.converged("argocd", degraded, names).done


def test_flux_has_converged_only_when_every_kustomization_is_ready():
    def kustomization(name: str, ready: str, reason: str) -> dict:
        condition = {"type": "Ready", "status": ready, "reason": reason, "message": "detail"}
        return {"metadata": {"name": name}, "status": {"conditions": [condition]}}

    ready = [kustomization("infrastructure", "True", "ReconciliationSucceeded"), kustomization("apps", "True", "x")]
    assert harness_gitops.converged("flux", ready, ["infrastructure", "apps"]).done
    waiting = [ready[0], kustomization("apps", "False", "DependencyNotReady")]
    state = harness_gitops.converged("flux", waiting, ["infrastructure", "apps"])
    assert not state.done and state.status == "apps: DependencyNotReady: detail"


def test_every_pod_the_harness_starts_admits_under_its_namespaces_pod_security_level(e2e_settings):
    rows = contract.load()
    clients = {client for row in rows if (client := scenarios.client_for(row, e2e_settings))}
    harness = scenarios.client_manifests(clients, e2e_settings, set()) + scenarios.newcomer_manifests(
        rows, e2e_settings
    )
    namespaces = [doc for doc in settings.e2e_build() if doc["kind"] == "Namespace"]
    harness += [
        traffic.fault_deployment(deployment, "/fault", e2e_settings, 1)
        for deployment in settings.e2e_build()
        if deployment["kind"] == "Deployment"
    ]
    in_the_apps_namespace = [doc for doc in harness if doc["metadata"].get("namespace") == e2e_settings.app_namespace]
    assert len(in_the_apps_namespace) > 2
    assert pod_security.pods_admit_under_their_namespaces_level(namespaces + harness, e2e_settings.gateway) == []


def test_the_id_the_gateway_gave_a_request_is_read_from_the_echo_servers_answer():
    body = "Request served by backend-1\n\nGET /api/orders HTTP/1.1\n\nHost: shop\nX-Request-Id: 6f1c-gw\nX-B3-Sampled: 0\n"
    assert traffic.served_request_id(body) == "6f1c-gw"
    assert traffic.served_request_id("upstream connect error") == ""


def test_a_batch_of_api_requests_waits_until_the_routes_bucket_holds_it_whatever_ran_before():
    """The burst past the limit empties the API's bucket; the traffic tests after it wait for the tokens they spend
    (Envoy refills continuously at value per window), and each batch fits a full bucket."""
    split = traffic.rows_with([row for row in contract.load() if row.caller == "internet"], "split")[0]
    limit = traffic.rate_limit_of(split)
    assert limit is not None, f"{split.name!r}: its route has no rate limit in the e2e overlay"
    per_second = limit.value / resilience.seconds(limit.window)
    assert traffic.refill_seconds(limit, 0, 200) == pytest.approx(200 / per_second)
    assert traffic.refill_seconds(limit, None, 200) == traffic.refill_seconds(limit, 0, 200)  # unknown: empty
    assert traffic.refill_seconds(limit, 150, 200) == pytest.approx(50 / per_second)
    assert traffic.refill_seconds(limit, limit.value, 200) == 0
    with pytest.raises(ValueError, match=f"{limit.value + 1} requests never fit in {limit.value} requests"):
        traffic.refill_seconds(limit, 0, limit.value + 1)
    home = next(row for row in contract.load() if row.caller == "internet" and row.request.path == "/")
    assert traffic.rate_limit_of(home) is None
    source = (REPO_ROOT / "e2e" / "test_traffic_policy.py").read_text()
    constants = {
        node.targets[0].id: node.value.value
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and isinstance(node.value, ast.Constant)
    }
    batches = {
        "SPLIT_REQUESTS": constants["SPLIT_REQUESTS"],
        "VERSION_REQUESTS": constants["VERSION_REQUESTS"],
        "RETRIED_REQUESTS + CONTROL_REQUESTS": constants["RETRIED_REQUESTS"] + constants["CONTROL_REQUESTS"],
        "BEFORE_EJECTION_LIMIT + AFTER_EJECTION_LIMIT": (
            constants["BEFORE_EJECTION_LIMIT"] + constants["AFTER_EJECTION_LIMIT"]
        ),
    }
    for batch, size in batches.items():
        assert traffic.refill_seconds(limit, 0, size) <= limit.value / per_second, batch
    assert source.count("make_room_in_the_rate_limit(") == 4
