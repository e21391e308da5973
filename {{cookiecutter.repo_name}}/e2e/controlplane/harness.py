"""The e2e harness on the local control plane: the same Bringup the kind run uses, over real Envoy proxies in
network namespaces (dataplane.py) instead of kind's containers. The contract's tests run unchanged against it.

    pytest -rs e2e --local-control-plane     # or: nox -s controlplane
"""

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from e2e.controlplane import binaries
from e2e.controlplane.bringup import LocalBringup
from e2e.controlplane.cluster import ComponentFailed, ControlPlane
from e2e.controlplane.dataplane import DataPlane
from e2e.harness import install_plan, scenarios, settings, tokens
from e2e.harness.bringup import Bringup
from e2e.harness.commands import Tools
from repo_tools import charts

REQUIRE = "REQUIRE_CONTROLPLANE"
# Each proxy is ready (its listeners from istiod) before any row runs, so a row that does not hold within this long
# will not hold, and its three tries need no pause between them; kind's deadline and pause also wait for the config
# to reach the proxies.
LOCAL_ROW_SECONDS = 20.0
LOCAL_ROW_INTERVAL = 0.2


def unavailable() -> str:
    """Why the local control plane cannot run here, or ""."""
    missing = binaries.missing_programs()
    if missing:
        return (
            f"the local control plane needs {', '.join(missing)}: run `python -m e2e.controlplane.binaries build` "
            "(Go 1.24+ and the Go module proxy), or set CONTROLPLANE_BIN_DIR to a directory that holds them"
        )
    if shutil.which("kubectl") is None or charts.real_helm() is None:
        return "the local control plane needs kubectl and helm on PATH: run `python repo_tools/toolchain.py BIN_DIR`"
    if charts.recordings() is None:
        return f"the local control plane renders the charts from their recorded sources: set {charts.RECORDED_FIXTURES}"
    if os.geteuid() != 0:
        return "the local data plane makes network namespaces, veth pairs and iptables rules: run it as root"
    missing_tools = [tool for tool in binaries.SYSTEM_TOOLS if not shutil.which(tool)]
    if missing_tools:
        packages = " ".join(sorted({binaries.SYSTEM_TOOLS[tool] for tool in missing_tools}))
        return f"the local data plane needs {', '.join(missing_tools)}: `python -m e2e.controlplane.binaries build` installs them (apt-get install {packages})"
    return ""


@dataclass
class LocalHarness(Bringup):
    """Bringup, with commands run in the pods' network namespaces and logs read from the proxies' own files."""

    local: LocalBringup | None = None
    dataplane: DataPlane | None = None

    def exec_command(self, namespace: str, pod: str, container: str, command: list[str]) -> list[str]:
        assert self.dataplane is not None
        return self.dataplane.exec_command(namespace, pod, command)

    def proxy_logs(self, namespace: str, selector: str) -> str:
        assert self.dataplane is not None
        return self.dataplane.proxy_logs(namespace, selector)

    def issue_acme_certificate(self) -> None:
        pytest.skip(
            "ACME runs on kind only: the local data plane has no stand-in for Pebble, a real ACME server, nor "
            "cert-manager's controller, which would solve its HTTP-01 challenge"
        )

    def serve_jwks(self) -> None:
        """As on kind, and then until the node fetches it as istiod will: a first fetch that fails leaves istiod
        refusing every token until one of its few retries."""
        super().serve_jwks()
        assert self.dataplane is not None
        self.dataplane.wait_until_served(tokens.overlay_token_settings().jwks_uri)


@contextmanager
def local_harness(
    rows: list, deployed_from: Path | None = None, keep_logs_in: Callable[[], Path | None] | None = None
) -> Iterator[LocalHarness]:
    """A local control plane with the repo installed, its e2e overlay applied (`deployed_from` another working
    tree's), the contract's clients running and every proxy ready; everything it made is removed afterwards, pass
    or fail. `keep_logs_in` says, after the tests, where to keep every component's and proxy's log (None: nowhere)."""
    programs = {program: directory / program for program, directory in binaries.program_dirs().items()}
    workdir = Path(tempfile.mkdtemp(prefix="local-control-plane-"))
    workdir.chmod(0o755)  # the proxies run as Istio's proxy user, which must reach their programs and files in here
    kubectl = str(shutil.which("kubectl"))
    plane = ControlPlane(programs, workdir, kubectl, binaries.kubernetes_minor())
    e2e_settings = settings.load("local-control-plane")
    local = LocalBringup(plane, e2e_settings, deployed_from=deployed_from)
    dataplane = DataPlane(
        plane,
        programs["envoy"],
        programs["pilot-agent"],
        programs[binaries.BOOTSTRAP_TEMPLATE],
        e2e_settings.echo_image,
        workdir / "dataplane",
        e2e_settings.control_plane_namespace,
        {stage.namespace for stage in install_plan.install_stages(e2e_settings)},
    )
    tools = Tools(kind="", kubectl=kubectl, helm=str(charts.real_helm()), kubeconfig=plane.kubeconfig)
    run = LocalHarness(
        tools,
        e2e_settings,
        rows,
        test_ca=local.test_ca,
        row_seconds=LOCAL_ROW_SECONDS,
        row_interval=LOCAL_ROW_INTERVAL,
        local=local,
        dataplane=dataplane,
    )
    started = time.monotonic()
    # A CI job's timeout stops the run with SIGTERM: as an interrupt, it still runs the cleanup below.
    previous_handler = signal.signal(signal.SIGTERM, stopped)
    try:
        with local.phase("start etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok"):
            plane.start()
        with local.phase("create the node's network (bridge, ClusterIPs, NodePorts)"):
            dataplane.create_node_network()
            local.istiod_hosts = dataplane.hosts_file
        local.install()
        dataplane.start()
        run.serve_jwks()
        local.install_apps()
        with local.phase("start the contract's clients"):
            if e2e_settings.gateway.gateway_api:
                run.wait_for_the_gateway()
            clients = {client for row in rows if (client := scenarios.client_for(row, e2e_settings))}
            extras = scenarios.client_manifests(clients, e2e_settings, run.service_accounts())
            run.apply(yaml.safe_dump_all(extras + scenarios.newcomer_manifests(rows, e2e_settings)))
        with local.phase("wait for every pod's proxy (its config from istiod) and app"):
            time.sleep(1)  # the data plane's next look at the pods
            dataplane.wait_ready()
        took = time.monotonic() - started
        print(f"  local control plane and data plane up in {took:.1f}s", flush=True)
        run.figures.append(f"bring-up {took:.0f}s: " + ", ".join(f"{name} {s:.1f}s" for name, s in local.timings))
        tests_started = time.monotonic()
        yield run
        run.figures.append(f"tests after the bring-up: {time.monotonic() - tests_started:.0f}s")
        bundle = keep_logs_in() if keep_logs_in is not None else None
        if bundle is not None:
            run.figures.append(f"e2e diagnostics written to {diagnostics_bundle(plane, dataplane, bundle).resolve()}")
    except ComponentFailed:
        print(plane.log_tails())
        raise
    finally:
        dataplane.stop()
        plane.stop()
        signal.signal(signal.SIGTERM, previous_handler)


def stopped(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def diagnostics_bundle(plane: ControlPlane, dataplane: DataPlane, bundle: Path) -> Path:
    """The control plane's logs and each pod's (istio-proxy.log holds its access log), as kind's bundle keeps them."""
    shutil.copytree(plane.workdir / "logs", bundle / "logs" / "control-plane", dirs_exist_ok=True)
    for log in sorted((dataplane.workdir / "pods").glob("*/*.log")):
        target = bundle / "logs" / "pods" / log.parent.name / log.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, target)
    return bundle
