"""A Kubernetes control plane as plain processes, with istiod beside it, for machines without Docker.

etcd, kube-apiserver (Pod Security admission, webhooks and ValidatingAdmissionPolicy on, as on any cluster),
kube-controller-manager and kube-scheduler run as they would on a node of the cluster; kwok stands in for the
kubelet: it marks the pods bound to its fake node Running and gives them IPs, but runs no container. istiod runs
as the local process `pilot-discovery` instead of its Deployment, reading the cluster's ConfigMaps (mesh config,
injection templates) and serving its injection and validation webhooks on 127.0.0.1, which the API server calls.

What this leaves out, and why: no container runs (there is no container runtime); the CNI agent's node work
(nothing to redirect without containers); cert-manager's controller and its webhook (Certificates are admitted by
their CRD's schema, but nobody issues them); kube-proxy and CoreDNS (no traffic crosses this control plane).
"""

import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests
import urllib3
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"
NODE_NAME = "kwok-node"
NODE_IP = "10.0.0.2"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
ISTIOD_POD_NAME = "istiod-local"
START_SECONDS = 120.0  # each component's own readiness
LOG_LINES = 25
ISTIOD_PLAINTEXT_XDS = 15010  # Istio's own ports, which the injected proxies' mesh config names
ISTIOD_XDS = 15012
# What istiod must not send the data plane's upstream Envoy, which lacks Istio's own extensions (README.md lists
# these as differences from production): the peer metadata exchange and the ALPN override filter.
UPSTREAM_ENVOY = {"PILOT_ENABLE_METADATA_EXCHANGE": "false", "PILOT_ENABLE_ALPN_FILTER": "false"}


class ComponentFailed(RuntimeError):
    """A component exited or never became ready; the message names it, its log's last lines and how to rerun it."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Process:
    name: str
    command: list[str]
    log: Path
    environment: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as output:
            self.popen = subprocess.Popen(
                self.command,
                stdout=output,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.environment},
                cwd=self.cwd,
                start_new_session=True,  # stopped as a group, never left behind by an interrupted run
            )

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def tail(self, lines: int = LOG_LINES) -> str:
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        return "\n".join(text.splitlines()[-lines:])

    def failure(self, what: str) -> ComponentFailed:
        variables = " ".join(f"{key}={value}" for key, value in self.environment.items())
        return ComponentFailed(
            f"{self.name} {what}. Last lines of {self.log}:\n{self.tail()}\n"
            f"To run it again by hand: {variables} {' '.join(self.command)}".replace("  ", " ")
        )

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)


# --- certificates ------------------------------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, key: ec.EllipticCurvePrivateKey | None = None, cert: x509.Certificate | None = None) -> None:
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    if cert is not None:
        path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def write_pki(directory: Path) -> None:
    """A CA, the API server's serving certificate, an admin client certificate (system:masters) and the service
    account signing key: ca, apiserver, admin, service-account (.crt/.key, .pub for the last)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "local-control-plane-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    _write(directory / "ca", ca_key, ca)

    def leaf(name: str, subject: x509.Name, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]) -> None:
        key = _key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        _write(directory / name, key, builder.sign(ca_key, hashes.SHA256()))

    service_ip = ipaddress.IPv4Address(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))
    leaf(
        "apiserver",
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
        x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
        [
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes.default.svc"),
            x509.DNSName("kubernetes.default.svc.cluster.local"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(service_ip),
        ],
    )
    leaf(
        "admin",
        x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                x509.NameAttribute(NameOID.COMMON_NAME, "local-admin"),
            ]
        ),
        x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH,
        [],
    )
    signing_key = _key()
    _write(directory / "service-account", signing_key)
    (directory / "service-account.pub").write_bytes(
        signing_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def kubeconfig(pki: Path, server: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")}}],
        "users": [
            {
                "name": "admin",
                "user": {"client-certificate": str(pki / "admin.crt"), "client-key": str(pki / "admin.key")},
            }
        ],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}],
        "current-context": "local",
    }


# --- the control plane -------------------------------------------------------------------------------------------


@dataclass
class ControlPlane:
    programs: dict[str, Path]  # program name -> executable
    workdir: Path
    kubectl_binary: str
    kubernetes_minor: str = ""  # the minor versions.env pins: a kube-apiserver of another one stops the run
    processes: list[Process] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    xds_host: str = "127.0.0.1"  # where istiod serves xDS

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    def process(self, name: str, command: list[str], **options) -> Process:
        process = Process(name, command, self.workdir / "logs" / f"{name}.log", **options)
        process.start()
        self.processes.append(process)
        return process

    def wait_until(self, process: Process, ready: Callable[[], bool], what: str) -> None:
        started = time.monotonic()
        while not ready():
            if not process.running():
                raise process.failure(f"exited with status {process.popen.returncode if process.popen else '?'}")
            if time.monotonic() - started > START_SECONDS:
                raise process.failure(f"was not {what} within {START_SECONDS:.0f}s")
            time.sleep(0.5)

    def get(self, url: str) -> requests.Response | None:
        try:
            return requests.get(
                url,
                cert=(str(self.pki / "admin.crt"), str(self.pki / "admin.key")),
                verify=str(self.pki / "ca.crt"),
                timeout=5,
            )
        except requests.RequestException:
            return None

    def healthy(self, path: str) -> bool:
        response = self.get(f"{self.server}{path}")
        return response is not None and response.status_code == 200

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.kubectl_binary, f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed:\n{result.stderr.strip()}")
        return result

    def start(self) -> None:
        """etcd, the API server, the controllers, the scheduler and kwok with its node; each waited for."""
        write_pki(self.pki)
        self.ports = {name: free_port() for name in ("etcd", "etcd-peer", "apiserver", "kcm", "scheduler", "kwok")}
        etcd = self.process(
            "etcd",
            [
                str(self.programs["etcd"]),
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{self.ports['etcd']}",
                f"--advertise-client-urls=http://127.0.0.1:{self.ports['etcd']}",
                f"--listen-peer-urls=http://127.0.0.1:{self.ports['etcd-peer']}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{self.ports['etcd-peer']}",
                f"--initial-cluster=default=http://127.0.0.1:{self.ports['etcd-peer']}",
                "--unsafe-no-fsync",  # a throwaway store: nothing to keep across a crash
            ],
        )
        self.wait_until(etcd, lambda: self._etcd_healthy(), "serving its health endpoint")
        pki = self.pki
        apiserver = self.process(
            "kube-apiserver",
            [
                str(self.programs["kube-apiserver"]),
                f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.ports['apiserver']}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--service-account-key-file={pki / 'service-account.pub'}",
                f"--service-account-signing-key-file={pki / 'service-account.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=RBAC",
                "--allow-privileged=true",  # the CNI agent's DaemonSet is privileged, as on kind
                "--endpoint-reconciler-type=none",  # a loopback address is no endpoint for the kubernetes Service
            ],
        )
        self.wait_until(apiserver, lambda: self.healthy("/readyz"), "ready (/readyz)")
        served = self.get(f"{self.server}/version")
        version = served.json().get("gitVersion", "") if served is not None else ""
        if self.kubernetes_minor and not version.startswith(f"v{self.kubernetes_minor}."):
            raise apiserver.failure(
                f"is {version or 'of no version'}, not Kubernetes {self.kubernetes_minor} as versions.env pins it "
                f"({self.programs['kube-apiserver']}); build the pinned one with `python -m e2e.controlplane.binaries build`"
            )
        self.kubeconfig.write_text(yaml.safe_dump(kubeconfig(pki, self.server)))
        common = [
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
        ]
        controllers = self.process(
            "kube-controller-manager",
            [
                str(self.programs["kube-controller-manager"]),
                *common,
                f"--secure-port={self.ports['kcm']}",
                f"--service-account-private-key-file={pki / 'service-account.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
            ],
        )
        scheduler = self.process(
            "kube-scheduler",
            [str(self.programs["kube-scheduler"]), *common, f"--secure-port={self.ports['scheduler']}"],
        )
        self.wait_until(controllers, lambda: self._local_healthy("kcm"), "healthy (/healthz)")
        self.wait_until(scheduler, lambda: self._local_healthy("scheduler"), "healthy (/healthz)")
        stages = self.workdir / "kwok-stages.yaml"
        stages.write_text(KWOK_STAGES)
        kwok = self.process(
            "kwok",
            [
                str(self.programs["kwok"]),
                f"--kubeconfig={self.kubeconfig}",
                f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
                f"--cidr={POD_CIDR}",
                f"--node-ip={NODE_IP}",
                f"--server-address=127.0.0.1:{self.ports['kwok']}",
                "--node-lease-duration-seconds=40",
                f"--config={stages}",
            ],
            environment={"HOME": str(self.workdir)},  # no ~/.kwok/kwok.yaml of the user's
        )
        self.kubectl("apply", "-f", "-", stdin=json.dumps(fake_node()))
        self.wait_until(kwok, self._node_ready, f"reporting node {NODE_NAME} Ready")

    def _etcd_healthy(self) -> bool:
        try:
            response = requests.get(f"http://127.0.0.1:{self.ports['etcd']}/health", timeout=2)
        except requests.RequestException:
            return False
        return response.status_code == 200 and response.json().get("health") == "true"

    def _local_healthy(self, component: str) -> bool:
        try:
            with warnings.catch_warnings():  # the component's own self-signed serving certificate: nothing to verify
                warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
                response = requests.get(f"https://127.0.0.1:{self.ports[component]}/healthz", verify=False, timeout=2)
        except requests.RequestException:
            return False
        return response.status_code == 200

    def _node_ready(self) -> bool:
        result = self.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
        if result.returncode != 0:
            return False
        conditions = json.loads(result.stdout).get("status", {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def start_istiod(self, namespace: str, hosts: Path | None = None) -> int:
        """pilot-discovery against this API server, as if its pod ran in `namespace` (where it reads its ConfigMaps);
        returns the port of its webhooks (HTTPS on 127.0.0.1). With `hosts` (the data plane runs): its xDS ports
        are Istio's own on the node's address, where the pods' proxies find it, and it resolves the cluster's
        names with that file as its /etc/hosts (kube-dns's part, e.g. for the JWKS it fetches)."""
        for name in ("istiod-webhooks", "istiod-grpc", "istiod-xds", "istiod-http", "istiod-monitoring"):
            self.ports[name] = free_port()
        if hosts is not None:
            self.xds_host = NODE_IP
            self.ports |= {"istiod-grpc": ISTIOD_PLAINTEXT_XDS, "istiod-xds": ISTIOD_XDS}
        home = self.workdir / "istiod"
        home.mkdir(exist_ok=True)
        # A mount namespace of its own, where the hosts file is bind-mounted over /etc/hosts (its network stays the
        # node's).
        own_hosts = (
            [
                "unshare",
                "--mount",
                "--propagation=private",
                "sh",
                "-c",
                f'mount --bind "{hosts}" /etc/hosts && exec "$@"',
                "sh",
            ]
            if hosts is not None
            else []
        )
        istiod = self.process(
            "istiod",
            [
                *own_hosts,
                str(self.programs["pilot-discovery"]),
                "discovery",
                f"--kubeconfig={self.kubeconfig}",
                f"--httpsAddr=127.0.0.1:{self.ports['istiod-webhooks']}",
                f"--grpcAddr={self.xds_host}:{self.ports['istiod-grpc']}",
                f"--secureGRPCAddr={self.xds_host}:{self.ports['istiod-xds']}",
                f"--httpAddr=127.0.0.1:{self.ports['istiod-http']}",
                f"--monitoringAddr=127.0.0.1:{self.ports['istiod-monitoring']}",
                "--log_output_level=default:info",
            ],
            environment={
                "POD_NAMESPACE": namespace,
                "POD_NAME": ISTIOD_POD_NAME,
                "REVISION": "default",
                "CLUSTER_ID": "Kubernetes",
                "ISTIOD_CUSTOM_HOST": "localhost",
                "INJECTION_WEBHOOK_CONFIG_NAME": "istio-sidecar-injector",
                "VALIDATION_WEBHOOK_CONFIG_NAME": f"istio-validator-{namespace}",
                "KUBECONFIG": str(self.kubeconfig),
                # istiod's analyzers write what they find to each Istio resource's status.validationMessages.
                "PILOT_ENABLE_ANALYSIS": "true",
                "PILOT_ANALYSIS_INTERVAL": "2s",
            }
            | (UPSTREAM_ENVOY if hosts is not None else {}),
            cwd=home,  # no ./etc/istio or ./var/lib/istio here: mesh config and templates come from the ConfigMaps
        )
        self.wait_until(istiod, self._istiod_ready, "ready (/ready)")
        return self.ports["istiod-webhooks"]

    def _istiod_ready(self) -> bool:
        try:
            response = requests.get(f"http://127.0.0.1:{self.ports['istiod-http']}/ready", timeout=2)
        except requests.RequestException:
            return False
        return response.status_code == 200

    def istiod_debug(self, path: str) -> str:
        response = requests.get(f"http://127.0.0.1:{self.ports['istiod-http']}/debug/{path}", timeout=30)
        response.raise_for_status()
        return response.text

    def stop(self) -> None:
        """Every process stopped (the last started first), and the working directory removed."""
        for process in reversed(self.processes):
            process.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tails(self) -> str:
        return "\n\n".join(f"--- {process.name} ({process.log})\n{process.tail()}" for process in self.processes)


# kwok's lifecycle for the fake node and its pods, in kwok's Stage API (kwok.x-k8s.io/v1alpha1): the node turns
# Ready, a pod bound to it turns Running and Ready with an IP from POD_CIDR, a deleted pod goes away at once.
KWOK_STAGES = """
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: node-ready}
spec:
  resourceRef: {apiGroup: v1, kind: Node}
  selector:
    matchExpressions:
    - {key: '.status.conditions.[] | select( .type == "Ready" ) | .status', operator: NotIn, values: ["True"]}
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - {type: Ready, status: "True", reason: KubeletReady, lastHeartbeatTime: {{ $now | Quote }}, lastTransitionTime: {{ $now | Quote }}}
      addresses:
      - {type: InternalIP, address: {{ NodeIP | Quote }}}
      phase: Running
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: pod-ready}
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: .metadata.deletionTimestamp, operator: DoesNotExist}
    - {key: .status.phase, operator: In, values: [Pending]}
  next:
    statusTemplate: |
      {{ $now := Now }}
      phase: Running
      startTime: {{ $now | Quote }}
      conditions:
      {{ range list "Initialized" "Ready" "ContainersReady" "PodScheduled" }}
      - {type: {{ . }}, status: "True", lastTransitionTime: {{ $now | Quote }}}
      {{ end }}
      containerStatuses:
      {{ range .spec.containers }}
      - {name: {{ .name | Quote }}, image: {{ .image | Quote }}, ready: true, started: true, restartCount: 0, state: {running: {startedAt: {{ $now | Quote }}}}}
      {{ end }}
      initContainerStatuses:
      {{ range .spec.initContainers }}
      - {name: {{ .name | Quote }}, image: {{ .image | Quote }}, ready: true, restartCount: 0, state: {terminated: {exitCode: 0, reason: Completed, startedAt: {{ $now | Quote }}, finishedAt: {{ $now | Quote }}}}}
      {{ end }}
      {{ with NodeIPsWith .spec.nodeName }}
      hostIP: {{ index . 0 | Quote }}
      {{ end }}
      {{ with PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) }}
      podIP: {{ index . 0 | Quote }}
      podIPs:
      {{ range . }}
      - ip: {{ . | Quote }}
      {{ end }}
      {{ end }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: pod-delete}
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: .metadata.deletionTimestamp, operator: Exists}
  next:
    finalizers: {empty: true}
    delete: true
"""


def fake_node() -> dict:
    """The node kwok keeps Ready; its capacity holds everything the e2e overlay and the install ask for."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE_NAME,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": NODE_NAME,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        "spec": {},
        "status": {
            "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "250"},
            "capacity": {"cpu": "32", "memory": "256Gi", "pods": "250"},
        },
    }
