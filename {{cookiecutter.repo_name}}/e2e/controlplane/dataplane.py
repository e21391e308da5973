"""The pods' data plane on the local control plane: real Envoy proxies, configured by the real istiod, carrying real
requests between network namespaces. Needs root (network namespaces, veth pairs, iptables in each pod's namespace).

For each pod the scheduler bound to the fake node, once kwok has given it an IP:
- a network namespace with the pod IP on a veth joined to the node's bridge (the node is NODE_IP on it);
- for a pod with Istio's sidecar: the traffic redirection of its `istio-validation` init container's own
  `istio-iptables` arguments, applied as Istio's CNI plugin applies them; then `pilot-agent` with the arguments and
  environment the injector gave its `istio-proxy` container, running as uid 1337 with a token for the pod's
  ServiceAccount (audience istio-ca), so that istiod's CA issues its mTLS certificate and istiod configures its Envoy;
- for a gateway pod (`proxy router`): pilot-agent and Envoy the same way, without redirection;
- for its app container, a stand-in by image (standins.py): the echo server, the JWKS file server, go-httpbin's
  status and delay routes, PostgreSQL's SSLRequest answer; a client image (curl) runs nothing until a probe runs.

What kube-proxy does, this does in user space (kube-proxy's old userspace mode): each ClusterIP is an address of the
node's bridge and a thread forwards its connections to the Service's ready endpoints; each NodePort listens on
127.0.0.1, as kind maps it there. Cluster DNS names resolve through each namespace's /etc/hosts (ip netns exec
mounts /etc/netns/NAME/hosts over it); istiod, which runs on the node, reads a hosts file of its own the same way.
"""

import contextlib
import fcntl
import json
import os
import re
import selectors
import shutil
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import requests

from e2e.controlplane.cluster import NODE_IP, NODE_NAME, POD_CIDR, ComponentFailed, ControlPlane, Process
from e2e.harness.settings import CURL_IMAGE, FAULT_IMAGE, JWKS_IMAGE
from e2e.harness.tokens import NGINX_PORT, NGINX_ROOT

BRIDGE = "igw0"
NAMESPACE_PREFIX = "igw-"
PROXY_UID = 1337  # Istio's proxy user: its own traffic is never redirected
STATUS_PORT = 15021  # pilot-agent's /healthz/ready
READY_SECONDS = 90.0
POLL_SECONDS = 0.5
LOCK = Path("/tmp/istio-gitops-local-data-plane.lock")  # one run per machine: the bridge and addresses are fixed
STANDINS = Path(__file__).with_name("standins.py")
CLUSTER_DOMAIN = "svc.cluster.local"
NODE_MEMORY = 8 * 2**30  # what a container without a memory limit is told it may use


class DataPlaneFailed(ComponentFailed):
    """A pod's proxy or stand-in did not come up; the message names the pod and shows its log."""


def run(*command: str, stdin: str | None = None) -> str:
    result = subprocess.run(command, input=stdin, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DataPlaneFailed(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def repository(image: str) -> str:
    """docker.io/istio/proxyv2:1.30.4 -> istio/proxyv2"""
    name = image.rsplit("@", 1)[0]
    name = name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name
    return name.removeprefix("docker.io/")


def downward(values: dict[str, str]) -> str:
    """The downward API's file format for labels and annotations: key="value" per line."""
    return "".join(f"{key}={json.dumps(value)}\n" for key, value in sorted(values.items()))


def expand(text: str, environment: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in a container's args."""
    return re.sub(r"\$\((\w+)\)", lambda found: environment.get(found.group(1), found.group(0)), text)


def field_value(pod: dict, path: str) -> str:
    found = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if found:
        return pod["metadata"].get(found.group(1), {}).get(found.group(2), "")
    value: object = pod
    for part in path.split("."):
        value = value.get(part, "") if isinstance(value, dict) else ""
    return str(value)


def container_environment(pod: dict, container: dict) -> dict[str, str]:
    """A container's env as the kubelet gives it: values, fields of the pod, and resource limits (the node's
    capacity here, as on a node, when the container sets none)."""
    environment: dict[str, str] = {}
    limits = container.get("resources", {}).get("limits", {})
    for variable in container.get("env") or []:
        source = variable.get("valueFrom")
        if source is None:
            environment[variable["name"]] = expand(variable.get("value", ""), environment)
        elif "fieldRef" in source:
            environment[variable["name"]] = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            resource = source["resourceFieldRef"]["resource"]
            if resource == "limits.cpu":
                environment[variable["name"]] = str(cpu_cores(str(limits.get("cpu", ""))))
            elif resource == "limits.memory":
                environment[variable["name"]] = str(memory_bytes(str(limits.get("memory", ""))) or NODE_MEMORY)
    return environment


def cpu_cores(quantity: str) -> int:
    """A CPU limit in whole cores, rounded up as the downward API does; none: the machine's cores."""
    if not quantity:
        return os.cpu_count() or 1
    millis = float(quantity[:-1]) if quantity.endswith("m") else float(quantity) * 1000
    return max(1, -(-int(millis) // 1000))


def memory_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity.removesuffix(suffix)) * factor)
    return int(quantity) if quantity.isdigit() else 0


@dataclass
class Pod:
    namespace: str
    name: str
    uid: str
    ip: str
    spec: dict
    labels: dict[str, str]
    annotations: dict[str, str]

    @classmethod
    def of(cls, item: dict) -> "Pod":
        meta = item["metadata"]
        return cls(
            meta["namespace"],
            meta["name"],
            meta["uid"],
            item["status"]["podIP"],
            item["spec"],
            meta.get("labels") or {},
            meta.get("annotations") or {},
        )

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def netns(self) -> str:
        return NAMESPACE_PREFIX + self.uid[:8]

    def containers(self) -> list[dict]:
        return (self.spec.get("initContainers") or []) + self.spec.get("containers", [])

    def proxy(self) -> dict | None:
        return next((c for c in self.containers() if c["name"] == "istio-proxy"), None)

    def redirection(self) -> list[str] | None:
        """The istio-iptables arguments Istio's CNI applies for this pod: its validation init container's, which
        only check them (None: a pod without a sidecar, or a gateway)."""
        validation = next((c for c in self.containers() if c["name"] == "istio-validation"), None)
        if validation is None:
            return None
        return [arg for arg in validation.get("args", []) if arg not in ("--run-validation", "--skip-rule-apply")]


@dataclass
class RunningPod:
    pod: Pod
    workdir: Path
    processes: list[Process] = field(default_factory=list)
    ready_ports: list[int] = field(default_factory=list)  # what answers once the pod is up


@dataclass
class DataPlane:
    plane: ControlPlane
    envoy: Path
    pilot_agent: Path
    bootstrap_template: Path
    echo_image: str
    workdir: Path
    control_plane_namespace: str
    install_namespaces: set[str]  # where the install layer's pods run: nothing of theirs is started
    pods: dict[str, RunningPod] = field(default_factory=dict)
    proxy: "UserspaceProxy | None" = None
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    hosts_text: str = ""
    _lock_file: IO[str] | None = None

    # --- the node ------------------------------------------------------------------------------------------------

    def create_node_network(self) -> None:
        """The node's bridge (NODE_IP, and later each ClusterIP); what a killed run left behind is removed first."""
        lock_file = LOCK.open("a+")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            lock_file.close()
            raise DataPlaneFailed(
                f"another local data plane runs on this machine (it holds {LOCK}); its bridge {BRIDGE}, addresses "
                "and network namespaces are the ones this run would make: wait for it to end"
            ) from error
        self._lock_file = lock_file
        remove_leftovers()
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        run("ip", "link", "add", BRIDGE, "type", "bridge")
        run("ip", "addr", "add", f"{NODE_IP}/32", "dev", BRIDGE)
        run("ip", "link", "set", BRIDGE, "up")
        run("ip", "route", "add", POD_CIDR, "dev", BRIDGE, "src", NODE_IP)
        # The proxy user must reach the programs: hard links (or copies) in this run's world-readable directory.
        for program in (self.envoy, self.pilot_agent):
            target = self.workdir / "bin" / program.name
            target.parent.mkdir(exist_ok=True)
            with contextlib.suppress(OSError):
                os.link(program, target)
            if not target.exists():
                shutil.copy2(program, target)
        shutil.copy(STANDINS, self.workdir / "bin" / STANDINS.name)
        self.hosts_file.write_text(self.hosts())
        self.proxy = UserspaceProxy()

    @property
    def hosts_file(self) -> Path:
        return self.workdir / "hosts"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="data-plane", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception as error:  # noqa: BLE001 - reported by wait_ready, never lost in a thread
                self.failures.append(f"{type(error).__name__}: {error}")
            self._stop.wait(POLL_SECONDS)

    def listed(self, resource: str) -> list[dict]:
        response = self.plane.get(f"{self.plane.server}/{resource}")
        if response is None or response.status_code != 200:
            return []
        return response.json()["items"]

    def sync(self) -> None:
        """Start the pods kwok made Running, stop the ones that went away, follow Services and endpoints."""
        items = self.listed(f"api/v1/pods?fieldSelector=spec.nodeName={NODE_NAME}")
        present = {}
        for item in items:
            if (
                item["status"].get("podIP")
                and not item["spec"].get("hostNetwork")
                and not item["metadata"].get("deletionTimestamp")
            ):
                pod = Pod.of(item)
                present[pod.key] = pod
        services = self.listed("api/v1/services")
        slices = self.listed("apis/discovery.k8s.io/v1/endpointslices")
        hosts = self.hosts(services)
        with self._lock:
            if hosts != self.hosts_text:
                self.hosts_text = hosts
                for path in [
                    self.hosts_file,
                    *(Path("/etc/netns") / p.pod.netns / "hosts" for p in self.pods.values()),
                ]:
                    if path.parent.exists():
                        path.write_text(hosts)  # in place: the bind mounts keep pointing at this file
            assert self.proxy is not None
            self.proxy.follow(services, slices, {pod.ip for pod in present.values()})
            for key in [key for key in self.pods if key not in present]:
                self.stop_pod(self.pods.pop(key))
            for key, pod in present.items():
                if key not in self.pods:
                    self.pods[key] = self.start_pod(pod)

    def hosts(self, services: list[dict] | None = None) -> str:
        """Every Service's names at its ClusterIP, but istiod's at the node, where it runs."""
        istiod = f"istiod.{self.control_plane_namespace}"
        lines = ["127.0.0.1 localhost", f"{NODE_IP} {istiod}.svc {istiod}.{CLUSTER_DOMAIN}"]
        for service in services or []:
            meta, spec = service["metadata"], service["spec"]
            if spec.get("clusterIP") not in (None, "", "None") and f"{meta['name']}.{meta['namespace']}" != istiod:
                name = f"{meta['name']}.{meta['namespace']}"
                lines.append(f"{spec['clusterIP']} {name}.{CLUSTER_DOMAIN} {name}.svc {name}")
        return "\n".join(lines) + "\n"

    # --- pods ----------------------------------------------------------------------------------------------------

    def start_pod(self, pod: Pod) -> RunningPod:
        running = RunningPod(pod, self.workdir / "pods" / f"{pod.namespace}_{pod.name}")
        running.workdir.mkdir(parents=True, exist_ok=True)
        self.pod_network(pod)
        arguments = pod.redirection()
        if arguments is not None:
            self.in_pod(pod, [str(self.workdir / "bin" / "pilot-agent"), "istio-iptables", *arguments])
        proxy = pod.proxy()
        if proxy is not None:
            running.processes.append(self.start_proxy(pod, proxy, running.workdir))
            running.ready_ports.append(STATUS_PORT)
        for container in pod.spec.get("containers", []):
            if container["name"] != "istio-proxy":
                self.start_app(pod, container, running)
        return running

    def pod_network(self, pod: Pod) -> None:
        netns, host_side = pod.netns, "igwv" + pod.uid[:8]
        etc = Path("/etc/netns") / netns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text(self.hosts_text or self.hosts())
        # There is no cluster DNS: names resolve through the hosts file, and any other lookup fails at once (nothing
        # answers on the pod's own port 53). The machine's resolver is out of the pod's reach, and its timeouts would
        # hold up every stand-in by 10s (Python's HTTPServer looks up the host's name as it binds).
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        run("ip", "netns", "add", netns)
        run("ip", "link", "add", host_side, "type", "veth", "peer", "name", "eth0", "netns", netns)
        run("ip", "link", "set", host_side, "master", BRIDGE, "up")
        for command in (
            ["addr", "add", f"{pod.ip}/{POD_CIDR.split('/')[1]}", "dev", "eth0"],
            ["link", "set", "eth0", "up"],
            ["link", "set", "lo", "up"],
            ["route", "add", NODE_IP, "dev", "eth0"],
            ["route", "add", "default", "via", NODE_IP, "dev", "eth0"],
        ):
            run("ip", "-n", netns, *command)
        for sysctl in (pod.spec.get("securityContext") or {}).get("sysctls") or []:
            if sysctl["name"].startswith("net."):
                self.in_pod(pod, ["sysctl", "-q", "-w", f"{sysctl['name']}={sysctl['value']}"])

    def in_pod(self, pod: Pod, command: list[str]) -> str:
        return run("ip", "netns", "exec", pod.netns, *command)

    def start_proxy(self, pod: Pod, container: dict, home: Path) -> Process:
        """pilot-agent with the container's own args and env, in a directory laid out like the container's."""
        item = {
            "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": pod.labels},
            "spec": pod.spec,
            "status": {"podIP": pod.ip, "hostIP": NODE_IP},
        }
        environment = container_environment(item, container)
        proxy_config = json.loads(environment.get("PROXY_CONFIG") or "{}") or {}
        environment["PROXY_CONFIG"] = json.dumps(proxy_config | {"binaryPath": str(self.workdir / "bin" / "envoy")})
        for directory in (
            "var/run/secrets/tokens",
            "var/run/secrets/istio",
            "var/run/secrets/workload-spiffe-uds",
            "var/run/secrets/credential-uds",
            "var/run/secrets/workload-spiffe-credentials",
            "var/lib/istio/envoy",
            "var/lib/istio/data",
            "etc/istio/proxy",
            "etc/istio/pod",
        ):
            (home / directory).mkdir(parents=True, exist_ok=True)
        token = self.plane.kubectl(
            "-n",
            pod.namespace,
            "create",
            "token",
            pod.spec.get("serviceAccountName", "default"),
            "--audience=istio-ca",
            "--duration=2h",
            "--bound-object-kind=Pod",
            f"--bound-object-name={pod.name}",
            f"--bound-object-uid={pod.uid}",
        ).stdout.strip()
        (home / "var/run/secrets/tokens/istio-token").write_text(token)
        (home / "var/run/secrets/istio/root-cert.pem").write_text(self.root_certificate(pod.namespace))
        (home / "etc/istio/pod/labels").write_text(downward(pod.labels))
        (home / "etc/istio/pod/annotations").write_text(downward(pod.annotations))
        shutil.copy(self.bootstrap_template, home / "var/lib/istio/envoy/envoy_bootstrap_tmpl.json")
        log = home / "istio-proxy.log"
        log.touch()  # Envoy reopens its stdout (/dev/stdout) for access logs, as the proxy user
        for path in [home, *home.rglob("*")]:
            os.chown(path, PROXY_UID, PROXY_UID)
        arguments = [expand(arg, environment) for arg in container.get("args", [])]
        process = Process(
            f"{pod.key} istio-proxy",
            [
                "ip",
                "netns",
                "exec",
                pod.netns,
                "setpriv",
                f"--reuid={PROXY_UID}",
                f"--regid={PROXY_UID}",
                "--clear-groups",
                str(self.workdir / "bin" / "pilot-agent"),
                *arguments,
            ],
            log,
            environment=environment,
            cwd=home,
        )
        process.start()
        return process

    def root_certificate(self, namespace: str) -> str:
        """istiod's root certificate, from the ConfigMap it publishes in every namespace (mounted in each pod)."""
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            result = self.plane.kubectl(
                "-n", namespace, "get", "configmap", "istio-ca-root-cert", "-o", "json", check=False
            )
            if result.returncode == 0:
                return json.loads(result.stdout)["data"]["root-cert.pem"]
            time.sleep(POLL_SECONDS)
        raise DataPlaneFailed(f"istiod published no istio-ca-root-cert ConfigMap in namespace {namespace}")

    def start_app(self, pod: Pod, container: dict, running: RunningPod) -> None:
        """The stand-in for the container's image, or nothing for a client image and images the run needs not."""
        image = repository(container.get("image", ""))
        environment = container_environment({"metadata": {}, "spec": pod.spec, "status": {}}, container)
        ports = [port["containerPort"] for port in container.get("ports") or []]
        standin = str(self.workdir / "bin" / STANDINS.name)
        if image == repository(self.echo_image):
            port = int(environment.get("PORT", "8080"))
            command = [standin, "echo", str(port), pod.name]
        elif image == repository(FAULT_IMAGE):
            port = int(environment.get("PORT", "8080"))
            command = [standin, "httpbin", str(port), environment.get("PREFIX", "")]
        elif image == repository(JWKS_IMAGE):
            port = NGINX_PORT
            root = running.workdir / "files"
            self.write_config_maps(pod, container, root)
            command = [standin, "files", str(port), str(root / NGINX_ROOT.lstrip("/"))]
        elif "postgres" in image:
            port = ports[0]
            command = [standin, "postgres", str(port)]
        elif image == repository(CURL_IMAGE) or pod.namespace in self.install_namespaces:
            return  # a client runs nothing until a probe does; the install layer's own pods are left out here
        else:
            raise DataPlaneFailed(f"{pod.key}: the local data plane has no stand-in for image {container['image']}")
        process = Process(
            f"{pod.key} {container['name']}",
            ["ip", "netns", "exec", pod.netns, python(), "-I", *command],
            running.workdir / f"{container['name']}.log",
            environment={"HOSTNAME": pod.name},
        )
        process.start()
        running.processes.append(process)
        running.ready_ports.append(port)

    def write_config_maps(self, pod: Pod, container: dict, root: Path) -> None:
        volumes = {volume["name"]: volume for volume in pod.spec.get("volumes") or []}
        for mount in container.get("volumeMounts") or []:
            config_map = volumes.get(mount["name"], {}).get("configMap")
            if config_map is None:
                continue
            data = json.loads(
                self.plane.kubectl("-n", pod.namespace, "get", "configmap", config_map["name"], "-o", "json").stdout
            )["data"]
            target = root / mount["mountPath"].lstrip("/")
            target.mkdir(parents=True, exist_ok=True)
            for name, content in data.items():
                (target / name).write_text(content)

    def stop_pod(self, running: RunningPod) -> None:
        for process in reversed(running.processes):
            process.stop()
        subprocess.run(["ip", "netns", "del", running.pod.netns], capture_output=True, check=False)
        shutil.rmtree(Path("/etc/netns") / running.pod.netns, ignore_errors=True)

    # --- readiness and teardown ----------------------------------------------------------------------------------

    def wait_ready(self, namespace: str = "") -> None:
        """Every pod started so far (of `namespace`, if given) answers: its proxy ready, its stand-in listening."""
        deadline = time.monotonic() + READY_SECONDS
        while True:
            if self.failures:
                raise DataPlaneFailed("the local data plane failed: " + "; ".join(self.failures))
            with self._lock:
                pods = [p for p in self.pods.values() if not namespace or p.pod.namespace == namespace]
            waiting = [p for p in pods if not self.answers(p)]
            if not waiting:
                return
            for running in waiting:
                for process in running.processes:
                    if not process.running():
                        raise DataPlaneFailed(
                            f"{process.name} exited ({process.popen.returncode if process.popen else '?'}); "
                            f"last lines of {process.log}:\n{process.tail()}"
                        )
            if time.monotonic() > deadline:
                names = ", ".join(p.pod.key for p in waiting)
                tails = "\n".join(f"--- {proc.log}\n{proc.tail()}" for p in waiting for proc in p.processes)
                raise DataPlaneFailed(f"not ready within {READY_SECONDS:.0f}s: {names}\n{tails}")
            time.sleep(POLL_SECONDS)

    def wait_until_served(self, url: str) -> None:
        """Until the node gets 200 for `url`, its host resolved as istiod resolves it (the node's hosts file)."""
        scheme, _, rest = url.partition("://")
        authority, _, path = rest.partition("/")
        host, _, port = authority.partition(":")
        deadline = time.monotonic() + READY_SECONDS
        status: object = "no address yet"
        while time.monotonic() < deadline:
            addresses = [line.split()[0] for line in self.hosts_text.splitlines() if host in line.split()[1:]]
            if addresses:
                target = f"{scheme}://{addresses[0]}:{port or (443 if scheme == 'https' else 80)}/{path}"
                try:
                    status = requests.get(target, headers={"Host": host}, timeout=2).status_code
                except requests.RequestException as error:
                    status = type(error).__name__
                if status == 200:
                    return
            time.sleep(POLL_SECONDS)
        raise DataPlaneFailed(f"{url} was not served to the node within {READY_SECONDS:.0f}s: {status}")

    def answers(self, running: RunningPod) -> bool:
        for port in running.ready_ports:
            if port == STATUS_PORT:
                try:
                    ready = requests.get(f"http://{running.pod.ip}:{port}/healthz/ready", timeout=1).status_code
                except requests.RequestException:
                    return False
                if ready != 200:
                    return False
            else:
                try:
                    self.in_pod(
                        running.pod,
                        ["python3", "-c", f"import socket; socket.create_connection(('127.0.0.1', {port}), 1)"],
                    )
                except DataPlaneFailed:
                    return False
        return True

    def exec_command(self, namespace: str, pod: str, command: list[str]) -> list[str]:
        """A command run in the pod's network namespace, as `kubectl exec` runs it in the pod."""
        with self._lock:
            running = self.pods.get(f"{namespace}/{pod}")
        if running is None:
            raise DataPlaneFailed(f"no pod {namespace}/{pod} runs on the local data plane")
        return ["ip", "netns", "exec", running.pod.netns, *command]

    def proxy_logs(self, namespace: str, selector: str) -> str:
        """The istio-proxy output of the selected pods, each line prefixed as `kubectl logs --prefix` does."""
        names = self.plane.kubectl("-n", namespace, "get", "pods", "-l", selector, "-o", "name").stdout.split()
        lines = []
        with self._lock:
            running = [self.pods.get(f"{namespace}/{name.removeprefix('pod/')}") for name in names]
        for pod in running:
            if pod is not None:
                text = (pod.workdir / "istio-proxy.log").read_text(errors="replace")
                lines += [f"[pod/{pod.pod.name}/istio-proxy] {line}" for line in text.splitlines()]
        return "\n".join(lines) + "\n"

    def stop(self) -> None:
        """Every pod's processes and namespace, the bridge and the lock, of a run that got as far as the lock."""
        if self._lock_file is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            for running in self.pods.values():
                self.stop_pod(running)
            self.pods.clear()
        if self.proxy is not None:
            self.proxy.stop()
        remove_leftovers()
        if self._lock_file is not None:
            self._lock_file.close()  # and with it the lock


def python() -> str:
    """The system's Python (the one under the run's virtualenv), which any user can run."""
    return os.path.realpath(shutil.which("python3") or "/usr/bin/python3")


def remove_leftovers() -> None:
    """The bridge, and every network namespace of this data plane, with their hosts files."""
    for namespace in run("ip", "netns", "list").split("\n"):
        name = namespace.split(" ", 1)[0]
        if name.startswith(NAMESPACE_PREFIX):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
            shutil.rmtree(Path("/etc/netns") / name, ignore_errors=True)
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)


# --- kube-proxy in user space ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frontend:
    address: str  # a ClusterIP on the services interface, or 127.0.0.1 for a NodePort
    port: int


class UserspaceProxy:
    """Listens on each Service's ClusterIP and port (and NodePort on 127.0.0.1), forwarding every connection to one
    of its endpoints in turn."""

    def __init__(self) -> None:
        self.backends: dict[Frontend, list[tuple[str, int]]] = {}
        self.listeners: dict[Frontend, socket.socket] = {}
        self.addresses: set[str] = set()
        self.turn = 0
        self.selector = selectors.DefaultSelector()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.accept_loop, name="userspace-proxy", daemon=True)
        self.thread.start()

    def follow(self, services: list[dict], slices: list[dict], pod_ips: set[str]) -> None:
        endpoints: dict[tuple[str, str], list[tuple[str, dict[str, int]]]] = {}
        for piece in slices:
            owner = (piece["metadata"].get("labels") or {}).get("kubernetes.io/service-name")
            ports = {port.get("name") or "": port["port"] for port in piece.get("ports") or []}
            for endpoint in piece.get("endpoints") or []:
                if (endpoint.get("conditions") or {}).get("ready") is False:
                    continue
                for address in endpoint["addresses"]:
                    if address in pod_ips:
                        endpoints.setdefault((piece["metadata"]["namespace"], owner or ""), []).append((address, ports))
        wanted: dict[Frontend, list[tuple[str, int]]] = {}
        for service in services:
            meta, spec = service["metadata"], service["spec"]
            cluster_ip = spec.get("clusterIP")
            if cluster_ip in (None, "", "None"):
                continue
            for port in spec.get("ports") or []:
                targets = [
                    (address, ports[port.get("name") or ""])
                    for address, ports in endpoints.get((meta["namespace"], meta["name"]), [])
                    if (port.get("name") or "") in ports
                ]
                wanted[Frontend(cluster_ip, port["port"])] = targets
                if port.get("nodePort"):
                    wanted[Frontend("127.0.0.1", port["nodePort"])] = targets
        with self.lock:
            self.backends = wanted
            for frontend in wanted:
                if frontend not in self.listeners:
                    self.listen(frontend)

    def listen(self, frontend: Frontend) -> None:
        if frontend.address != "127.0.0.1" and frontend.address not in self.addresses:
            run("ip", "addr", "add", f"{frontend.address}/32", "dev", BRIDGE)
            self.addresses.add(frontend.address)
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((frontend.address, frontend.port))
        except OSError as error:
            listener.close()
            raise DataPlaneFailed(
                f"cannot listen on {frontend.address}:{frontend.port} for a Service: {error}"
            ) from error
        listener.listen(256)
        listener.setblocking(False)
        self.listeners[frontend] = listener
        self.selector.register(listener, selectors.EVENT_READ, frontend)

    def accept_loop(self) -> None:
        while not self.stopped.is_set():
            with self.lock:
                registered = bool(self.listeners)
            if not registered:
                time.sleep(0.1)
                continue
            for key, _ in self.selector.select(timeout=0.2):
                with contextlib.suppress(OSError):
                    client, _ = key.fileobj.accept()  # type: ignore[union-attr]
                    threading.Thread(target=self.forward, args=(client, key.data), daemon=True).start()

    def forward(self, client: socket.socket, frontend: Frontend) -> None:
        with self.lock:
            targets = self.backends.get(frontend) or []
            self.turn += 1
            target = targets[self.turn % len(targets)] if targets else None
        if target is None:
            client.close()  # no endpoint: refused, as kube-proxy's reject rule does
            return
        try:
            upstream = socket.create_connection(target, timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        for end in (client, upstream):  # each chunk passed on at once: Nagle's wait would add 40ms per answer
            end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pipe(client, upstream)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        for listener in self.listeners.values():
            listener.close()


def pipe(one: socket.socket, other: socket.socket) -> None:
    """Copy bytes both ways until both sides are done; a half close is passed on."""

    def copy(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except ConnectionResetError:
            # Passed on as a reset, as a proxy that only rewrites addresses would: a client tells "reset" apart
            # from "closed" (curl exit 56 against 52), and the contract's "no-answer" is the reset.
            # SHUT_RD wakes the other direction's blocked recv; the last close then sends the reset (linger 0).
            with contextlib.suppress(OSError):
                sink.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sink.shutdown(socket.SHUT_RD)
            return
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    back = threading.Thread(target=copy, args=(other, one), daemon=True)
    back.start()
    copy(one, other)
    back.join()
    one.close()
    other.close()
