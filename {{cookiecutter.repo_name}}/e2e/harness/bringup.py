"""Bring a kind cluster to the state the repo declares, phase by phase, each phase timed and logged."""

import dataclasses
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests
import trustme
import yaml

from e2e.harness import acme, budget, commands, gitops, scenarios, tls, tokens, traffic
from e2e.harness.commands import Tools
from e2e.harness.install_plan import Stage, gateway_release, install_stages, node_port_mismatch, split_by_stage
from e2e.harness.retry import Check, eventually
from e2e.harness.settings import HARNESS_LABEL, INFRASTRUCTURE_OVERLAY, Settings
from repo_tools import REPO_ROOT, charts, install, kustomize
from repo_tools import gitops as repo_gitops
from repo_tools.contract import Row
from repo_tools.resources import selects, service_fqdn

log = logging.getLogger("e2e")
WEBHOOK_NOT_READY = ("failed calling webhook", "no endpoints available for service", "connection refused")


def unavailable(reason: str, environ: dict[str, str]) -> tuple[str, str]:
    """("skip" | "fail", reason): on CI (CI set to anything but false, 0 or nothing, as CI services set it) a
    missing tool fails the run instead of skipping it."""
    on_ci = environ.get("CI", "").strip().lower() not in ("", "false", "0", "no")
    return ("fail" if on_ci else "skip", reason)


def missing_prerequisites(
    which: Callable[[str], str | None],
    docker_info: Callable[[], tuple[int, str]],
    tools: dict[str, str | None],
    gitops: bool = False,
) -> str:
    """Why the e2e suite cannot run here, naming every missing tool, or "" when it can.

    tools: name -> path given by flag (or None). The GitOps run also commits a snapshot with git.
    """
    needed = ("docker", "kind", "kubectl", "helm") + (("git",) if gitops else ())
    missing = [name for name in needed if not (tools.get(name) or which(name))]
    if missing:
        return f"e2e needs {', '.join(f'`{name}`' for name in missing)} on PATH; see README.md for the pinned versions"
    exit_code, output = docker_info()
    if exit_code != 0:
        last_line = output.strip().splitlines()[-1] if output.strip() else f"exit {exit_code}"
        return f"e2e needs a running Docker engine: `docker info` failed: {last_line}"
    return ""


def service_in_front_of(services: list[dict], pods: list[dict], workload: str) -> dict:
    """The Service whose selector picks these pods: a selector picks a pod when it is a subset of its labels."""
    chosen = [
        service
        for service in services
        if service["spec"].get("selector")
        and any(selects(service["spec"]["selector"], pod["metadata"].get("labels", {})) for pod in pods)
    ]
    if not chosen:
        raise RuntimeError(f"no Service selects the pods of {workload} ({len(pods)} found): is the gateway installed?")
    return chosen[0]


def version_mismatch(kind_version_output: str, pinned: str) -> str:
    """ "" when `kind version` reports the pinned minor release, else a sentence saying what differs."""
    found = re.search(r"kind v?(\d+\.\d+)\.\d+", kind_version_output)
    wanted = pinned.lstrip("v").rsplit(".", 1)[0]
    if found and found.group(1) == wanted:
        return ""
    return f"kind {found.group(0) if found else 'of unknown version'} is not the pinned {pinned} (versions.env)"


@dataclass
class Bringup:
    tools: Tools
    settings: Settings
    rows: list[Row]
    timings: list[tuple[str, float]] = field(default_factory=list)
    test_ca: trustme.CA = field(default_factory=trustme.CA)
    agent: str = ""  # the GitOps agent that installed the cluster, if one did (--gitops)
    authority: tokens.Authority = field(default_factory=tokens.Authority.generate)  # the run's token issuer
    jwks: tokens.JwksLocation | None = None  # where it serves its JWKS, once it does
    row_seconds: float = budget.ROW_HOLDS  # how long a row may take to hold: config propagation on kind
    row_interval: float = 1.0  # between a row's tries: three in a row, a second apart, show it stable on kind
    figures: list[str] = field(default_factory=list)  # what the run measured, printed at its end

    def exec_command(self, namespace: str, pod: str, container: str, command: list[str]) -> list[str]:
        """The command line that runs `command` in a container of a pod."""
        return commands.exec_in(self.tools, namespace, pod, container, command)

    def proxy_logs(self, namespace: str, selector: str) -> str:
        """The istio-proxy logs of the selected pods, each line prefixed with its pod."""
        command = commands.kubectl(
            self.tools, "-n", namespace, "logs", "-l", selector, "-c", "istio-proxy", "--tail=-1", "--prefix"
        )
        return commands.run([*command, "--max-log-requests=20"], timeout=60).stdout

    def eventually_holds(self, check: Callable[[], Check]) -> Check:
        return eventually(check, timeout=self.row_seconds, interval=self.row_interval, consecutive=3)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        log.info("e2e phase %s ...", name)
        try:
            yield
        finally:
            seconds = time.perf_counter() - started
            self.timings.append((name, seconds))
            log.info("e2e phase %s took %.1fs", name, seconds)

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        return commands.run_checked(commands.kubectl(self.tools, *args), stdin=stdin)

    def apply(
        self, manifests: str, retry_for: float = 60.0, field_manager: str = "kubectl", namespace: str = ""
    ) -> None:
        """kubectl apply, retried while Istio's or cert-manager's webhook is not serving yet."""
        deadline = time.monotonic() + retry_for
        while True:
            result = commands.run(commands.apply_stdin(self.tools, field_manager, namespace), stdin=manifests)
            if result.returncode == 0:
                return
            if time.monotonic() > deadline or not any(message in result.stderr for message in WEBHOOK_NOT_READY):
                raise RuntimeError(f"kubectl apply failed:\n{result.stderr.strip()}")
            time.sleep(3)

    @property
    def stages(self) -> list[Stage]:
        return install_stages(self.settings)

    def install_infrastructure(self) -> None:
        # From a copy: kustomize pulls the charts beside each kustomization, which must not land in the repo (a
        # --gitops run would commit them into its snapshot).
        with self.phase("render infrastructure/overlays/e2e with helm"), charts.infrastructure_copy() as copy:
            overlay = copy / INFRASTRUCTURE_OVERLAY.relative_to(REPO_ROOT / "infrastructure")
            rendered = commands.run_checked(commands.render_with_helm(self.tools, overlay))
        docs = kustomize.parse(rendered)
        for stage, stage_docs in zip(self.stages, split_by_stage(docs, self.stages), strict=True):
            with self.phase(f"install {stage.name}"):
                self.apply(yaml.safe_dump_all(stage_docs))
                for deployment in stage.deployments:
                    commands.run_checked(commands.rollout_status(self.tools, stage.namespace, deployment))
                for daemonset in stage.daemonsets:
                    commands.run_checked(
                        commands.rollout_status(self.tools, stage.namespace, daemonset, kind="daemonset")
                    )
            if not self.settings.gateway.gateway_api and stage.releases == (gateway_release(),):
                self.check_node_ports()

    def check_node_ports(self) -> None:
        live = json.loads(
            self.kubectl("-n", self.settings.gateway.namespace, "get", "deployments,services", "-o", "json")
        )
        mismatch = node_port_mismatch(live["items"], self.settings)
        if mismatch:
            raise RuntimeError(mismatch)

    def log_node_cpu(self) -> None:
        """The scheduler's view of the node after bring-up, to compare with the capacity test's sum."""
        described = commands.run(commands.kubectl(self.tools, "describe", "nodes"), timeout=60).stdout
        allocated = described.split("Allocated resources:", 1)[-1].split("Events:", 1)[0]
        log.info("e2e node after bring-up:%s", allocated.rstrip())

    def sync_with_gitops(
        self, snapshot: Path, url: str, branch: str, timeout: float = budget.GITOPS_CONVERGENCE
    ) -> None:
        """Install the pinned agent, point it at the served snapshot's e2e entry point, and wait for convergence."""
        tool = self.agent = install.gitops_tool()
        agent = gitops.AGENTS[tool]
        namespace = agent.namespace
        with self.phase(f"install {tool} from its release manifests"):
            published = requests.get(gitops.agent_manifests_url(tool), timeout=budget.AGENT_DOWNLOAD)
            published.raise_for_status()
            self.apply(yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}))
            manifests = yaml.safe_dump_all(gitops.agent_manifests(tool, published.text))
            self.apply(manifests, field_manager=tool, namespace=namespace)
            self.kubectl(
                "-n",
                namespace,
                "wait",
                "deployments",
                "--all",
                "--for=condition=Available",
                f"--timeout={budget.AGENT_READY}s",
            )
        entry_point = snapshot / "clusters" / tool / gitops.E2E_ENVIRONMENT
        if tool == "argocd":
            docs = repo_gitops.entry_point_documents(entry_point)
            # As README.md bootstraps it: a field manager of its own, so that argocd-cm keeps the install's keys.
            self.apply(kustomize.render(entry_point), field_manager=gitops.ENTRY_POINT_FIELD_MANAGER)
        else:
            docs = [gitops.flux_source(url, branch), *repo_gitops.entry_point_documents(entry_point)]
            self.apply(yaml.safe_dump_all(docs), field_manager=gitops.ENTRY_POINT_FIELD_MANAGER)
        expected = [doc["metadata"]["name"] for doc in docs if doc["kind"] == agent.reports]
        with self.phase(f"wait for {tool} to sync clusters/{tool}/{gitops.E2E_ENVIRONMENT}"):
            deadline = time.monotonic() + timeout
            while True:
                objects = json.loads(self.kubectl("-n", namespace, "get", agent.resource, "-o", "json"))["items"]
                state = gitops.converged(tool, objects, expected)
                if state.done:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{tool} did not converge in {timeout:.0f}s: {state.status}")
                log.info("e2e waiting for %s: %s", tool, state.status)
                time.sleep(15)
        if not self.settings.gateway.gateway_api:  # with the Gateway API, install_apps waits for istiod's gateway
            self.check_node_ports()

    def install_test_ca(self) -> None:
        with self.phase("create the test CA secret"):
            # Before --gitops syncs the gateway's namespace; a field manager of its own so that it never removes
            # fields the install applied to the same Namespace.
            namespace = self.settings.gateway.namespace
            namespace_manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
            self.apply(yaml.safe_dump(namespace_manifest), field_manager="e2e-harness")
            self.apply(
                tls.ca_secret_manifest(self.test_ca, self.settings.test_ca_secret, self.settings.gateway.namespace)
            )

    def serve_jwks(self) -> None:
        """The run's JWKS, served where the e2e overlay's RequestAuthentication fetches it, before the apps layer
        exists: istiod fetches the jwksUri when it first pushes the RequestAuthentication, and after a failed fetch
        refuses every token until one of its few retries, seconds apart, succeeds (pilot's jwks_resolver.go)."""
        token_settings = tokens.overlay_token_settings()
        location = tokens.jwks_location(token_settings.jwks_uri)
        with self.phase(f"serve the test tokens' JWKS at {token_settings.jwks_uri}"):
            docs = tokens.jwks_server_manifests(location, self.authority.jwks(), self.settings.proxy_cpu)
            served = self.kubectl(
                "-n", location.namespace, "get", "configmap", location.service, "-o", "json", "--ignore-not-found"
            )
            self.apply(yaml.safe_dump_all(docs), field_manager="e2e-harness")
            commands.run_checked(commands.rollout_status(self.tools, location.namespace, location.service))
            self.jwks = location
            configmap = next(doc for doc in docs if doc["kind"] == "ConfigMap")
            namespace = self.settings.control_plane_namespace
            if (
                served
                and json.loads(served).get("data") != configmap["data"]
                and self.kubectl("-n", namespace, "get", "deployment/istiod", "-o", "name", "--ignore-not-found")
            ):
                # A reused cluster: istiod holds the last run's keys (it refetches every 20 minutes); restart it.
                self.kubectl("-n", namespace, "rollout", "restart", "deployment/istiod")
                commands.run_checked(commands.rollout_status(self.tools, namespace, "istiod"))

    def token_headers(self, kind: str) -> tuple[tuple[str, str], ...]:
        """The Authorization header for a token of `kind`, minted now for the overlay's issuer; () for none."""
        if kind == tokens.NO_TOKEN:
            return ()
        issuer = tokens.overlay_token_settings().issuer
        return tokens.authorization(kind, self.authority, issuer, int(time.time()))

    def install_apps(self, with_overlay: bool = True) -> None:
        with self.phase("apply the apps e2e overlay and the test clients"):
            if with_overlay:
                self.apply(kustomize.render(REPO_ROOT / "apps" / "overlays" / "e2e"))
            if self.settings.gateway.gateway_api:
                # Before the clients: the gateway row's client runs as the gateway's ServiceAccount, which istiod
                # must create itself (it leaves alone one it did not create).
                self.wait_for_the_gateway()
            existing = self.service_accounts()
            clients = {client for row in self.rows if (client := scenarios.client_for(row, self.settings))}
            extras = scenarios.client_manifests(clients, self.settings, existing) + scenarios.newcomer_manifests(
                self.rows, self.settings
            )
            self.apply(yaml.safe_dump_all(extras))

    def wait_for_the_gateway(self) -> None:
        gateway = self.settings.gateway
        with self.phase(f"wait for istiod to deploy the gateway of Gateway {gateway.gateway_name}"):
            self.kubectl(
                "-n",
                gateway.namespace,
                "wait",
                f"deployment/{gateway.deployment}",
                "--for=create",
                f"--timeout={budget.CREATED}s",
            )
            commands.run_checked(commands.rollout_status(self.tools, gateway.namespace, gateway.deployment))
        self.check_node_ports()

    def wait_for_workloads(self) -> None:
        with self.phase("wait for rollouts, clients and the certificate"):
            deployments = json.loads(
                self.kubectl("-n", self.settings.app_namespace, "get", "deployments", "-o", "json")
            )["items"]
            for deployment in deployments:
                commands.run_checked(
                    commands.rollout_status(self.tools, self.settings.app_namespace, deployment["metadata"]["name"])
                )
            self.kubectl(
                "wait",
                "pods",
                "-A",
                "-l",
                f"{HARNESS_LABEL}=true",
                "--for=condition=Ready",
                f"--timeout={budget.PODS_READY}s",
            )
            self.kubectl(
                "-n",
                self.settings.gateway.namespace,
                "wait",
                f"certificate/{self.settings.certificate}",
                "--for=condition=Ready",
                f"--timeout={budget.CERTIFICATE_READY}s",
            )

    def service_accounts(self) -> set[tuple[str, str]]:
        items = json.loads(self.kubectl("get", "serviceaccounts", "-A", "-o", "json"))["items"]
        return {(item["metadata"]["namespace"], item["metadata"]["name"]) for item in items}

    def pods_without_sidecar(self, namespace: str, selector: str = "") -> list[str]:
        args = ["-n", namespace, "get", "pods", "-o", "json"] + (["-l", selector] if selector else [])
        return pods_missing_proxy(json.loads(self.kubectl(*args))["items"])

    def gateway_pods(self) -> int:
        gateway = self.settings.gateway
        return len(self.kubectl("-n", gateway.namespace, "get", "pods", "-l", gateway.selector, "-o", "name").split())

    def make_room_in_the_rate_limit(self, ca_file: str, row: Row, requests: int) -> None:
        """Wait until the route of the row holds `requests` tokens, so that no test depends on what an earlier one
        (the burst past the limit) left in the bucket. One gateway pod reports its bucket in X-RateLimit-Remaining;
        with more, each client connection may meet another pod, so the bucket is taken as empty."""
        limit = traffic.rate_limit_of(row)
        if limit is None:
            return
        s = self.settings
        port = s.https_node_port if row.request.scheme == "https" else s.http_node_port
        headers = (*row.request.headers, *self.token_headers(row.request.token))
        response = tls.send(
            row.request.method, row.request.scheme, "127.0.0.1", port, s.host, row.request.path, ca_file, headers
        )
        remaining = response.headers.get("x-ratelimit-remaining", "")
        known = int(remaining) if remaining.isdigit() and self.gateway_pods() == 1 else None
        wait = traffic.refill_seconds(limit, known, requests)
        log.info("%s: %s tokens left, waiting %.1fs for %d", row.name, remaining or "unknown", wait, requests)
        time.sleep(wait)

    def gateway_service(self) -> dict:
        """The gateway's Service: where Pebble's DNS and, for the e2e host, the cluster's DNS send requests."""
        gateway = self.settings.gateway
        services = json.loads(self.kubectl("-n", gateway.namespace, "get", "services", "-o", "json"))["items"]
        pods = json.loads(self.kubectl("-n", gateway.namespace, "get", "pods", "-l", gateway.selector, "-o", "json"))
        return service_in_front_of(services, pods["items"], gateway.deployment)

    def resolve_the_host_to_the_gateway_in_cluster(self, service: dict) -> None:
        coredns = json.loads(self.kubectl("-n", "kube-system", "get", "configmap", "coredns", "-o", "json"))
        host = service_fqdn(service["metadata"]["name"], service["metadata"]["namespace"])
        corefile = acme.corefile_resolving(coredns["data"]["Corefile"], self.settings.host, host)
        patch = json.dumps({"data": {"Corefile": corefile}})
        self.kubectl("-n", "kube-system", "patch", "configmap", "coredns", "--type=merge", "-p", patch)

    def issue_acme_certificate(self) -> None:
        """Pebble, then the repo's ACME Issuer pointed at it, then a Certificate for the e2e host, Ready."""
        with self.phase("issue a certificate over ACME HTTP-01 from Pebble"):
            service = self.gateway_service()
            # cert-manager's own reachability check resolves the host with the cluster's DNS (CoreDNS reloads).
            self.resolve_the_host_to_the_gateway_in_cluster(service)
            # A reused cluster may hold a certificate from an earlier Pebble, whose root is gone.
            namespace = self.settings.gateway.namespace
            self.kubectl("-n", namespace, "delete", f"certificate/{acme.CERTIFICATE}", "--ignore-not-found")
            self.kubectl("-n", namespace, "delete", f"secret/{acme.SECRET}", "--ignore-not-found")
            docs = acme.manifests(self.settings, service["spec"]["clusterIP"])
            cert_manager_kinds = ("Issuer", "Certificate")
            self.apply(yaml.safe_dump_all([doc for doc in docs if doc["kind"] not in cert_manager_kinds]))
            for doc in docs:
                if doc["kind"] == "Deployment":
                    commands.run_checked(commands.rollout_status(self.tools, acme.NAMESPACE, doc["metadata"]["name"]))
            self.apply(yaml.safe_dump_all([doc for doc in docs if doc["kind"] in cert_manager_kinds]))
            self.kubectl(
                "-n",
                self.settings.gateway.namespace,
                "wait",
                f"certificate/{acme.CERTIFICATE}",
                "--for=condition=Ready",
                f"--timeout={budget.ACME_CERTIFICATE_READY}s",
            )

    def pebble_root(self, directory: Path) -> str:
        path = directory / "pebble-root.pem"
        path.write_text(self.kubectl("get", "--raw", acme.root_certificate_path()))
        return str(path)

    @contextmanager
    def gateway_serving(self, secret: str) -> Iterator[None]:
        """The app's Gateway serves HTTPS with another TLS secret for the duration, then its own again."""
        settings = self.settings
        namespace = settings.gateway.namespace if settings.gateway.gateway_api else settings.app_namespace
        kind = "gateways.gateway.networking.k8s.io" if settings.gateway.gateway_api else "gateways.networking.istio.io"
        gateway = json.loads(self.kubectl("-n", namespace, "get", kind, "-o", "json"))["items"][0]
        path = acme.https_secret_path(gateway)
        original = acme.json_pointer_get(gateway, path)

        def use(name: str) -> None:
            patch = json.dumps([{"op": "replace", "path": path, "value": name}])
            self.kubectl("-n", namespace, "patch", f"{kind}/{gateway['metadata']['name']}", "--type=json", "-p", patch)

        use(secret)
        try:
            yield
        finally:
            use(original)

    @contextmanager
    def gitops_paused(self) -> Iterator[None]:
        """The GitOps agent that installed the cluster (if one did) leaves it alone for the duration: a test that
        scales a Deployment down would otherwise see it back within seconds (Argo CD's selfHeal) or at Flux's
        next sync."""
        if not self.agent:
            yield
            return
        namespace, resource = gitops.AGENTS[self.agent].namespace, gitops.AGENTS[self.agent].resource
        names = self.kubectl("-n", namespace, "get", resource, "-o", "name").split()
        for args in gitops.pause_commands(self.agent, names, paused=True):
            self.kubectl("-n", namespace, *args)
        try:
            yield
        finally:
            for args in gitops.pause_commands(self.agent, names, paused=False):
                self.kubectl("-n", namespace, *args)

    def ca_file(self, directory: Path) -> str:
        path = directory / "e2e-test-ca.pem"
        self.test_ca.cert_pem.write_to_path(str(path))
        return str(path)


def pods_missing_proxy(pods: list[dict]) -> list[str]:
    """Names of pods with no istio-proxy container (native sidecars sit in initContainers)."""
    missing = []
    for pod in pods:
        spec = pod["spec"]
        names = {c["name"] for c in spec.get("containers", [])} | {c["name"] for c in spec.get("initContainers", [])}
        if "istio-proxy" not in names:
            missing.append(pod["metadata"]["name"])
    return missing


def probe_once(bringup: Bringup, probe: scenarios.Probe, ca_file: str) -> Check:
    """Send one row's request, tagged with its own id for the access logs, and judge it."""
    settings = bringup.settings
    request_id = f"e2e-{uuid.uuid4().hex[:16]}"
    # In the query: the access logs print it, and neither routes nor policies match on it.
    probe = dataclasses.replace(
        probe, path=traffic.tagged(probe.path, request_id), url=probe.url and traffic.tagged(probe.url, request_id)
    )
    tagged = f" [request {request_id}: grep the diagnostics bundle's logs/ for it]"
    if probe.client is None:
        port = settings.https_node_port if probe.scheme == "https" else settings.http_node_port
        try:
            method = probe.row.request.method
            headers = probe.headers + bringup.token_headers(probe.token)
            # Verbatim: a row's path may test how the gateway normalizes "//", "%2F" or "." segments.
            response = tls.send_verbatim(
                method, probe.scheme, "127.0.0.1", port, settings.host, probe.path, ca_file, headers
            )
        except Exception as error:  # noqa: BLE001 - any transport error is an answer to judge, not a crash
            return Check(False, f"{type(error).__name__}: {error}{tagged}")
        answer = scenarios.Answer(0, response.status, response.text, response.location)
    else:
        command = bringup.exec_command(
            probe.client.namespace, probe.client.name, "curl", scenarios.client_command(probe)
        )
        result = commands.run(command, timeout=30)
        answer = (
            scenarios.parse_curl(result.returncode, result.stdout)
            if not probe.tcp
            else scenarios.Answer(result.returncode, None, result.stdout)
        )
    holds, seen = scenarios.judge(probe, answer, settings)
    return Check(holds, seen + tagged)


def positive_control(bringup: Bringup, client: scenarios.Client) -> Check:
    """A plaintext request that must work from this client, so that exit 56 elsewhere means mTLS, not a broken pod."""
    command = bringup.exec_command(
        client.namespace,
        client.name,
        "curl",
        [
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            scenarios.plaintext_control_url(bringup.settings),
        ],
    )
    result = commands.run(command, timeout=30)
    return Check(
        result.returncode == 0 and result.stdout.strip() == "200",
        f"control: exit {result.returncode}, {result.stdout.strip()!r}",
    )
