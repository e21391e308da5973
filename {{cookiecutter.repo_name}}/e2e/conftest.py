"""The e2e suite: one kind cluster per session, set up from this repo; skipped with the reason when it cannot run.

    pytest e2e [--keep-cluster] [--reuse-cluster] [--kind-bin PATH] [--kind-kubectl-bin PATH] [--helm-bin PATH]
               [--istioctl-bin PATH] [--cluster-name NAME] [--diagnostics-dir DIR] [--gitops]
    pytest e2e --local-control-plane    # the same tests on a local control plane and real Envoy proxies, no Docker

Options --cluster-name, --keep-cluster, --kind-bin and --kind-kubectl-bin come from pytest-kind-ng; the
binaries default to the ones on PATH. Nothing is downloaded.
"""

import contextlib
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_kind import KindCluster

from e2e.harness import acme, bringup, commands, diagnostics, gitops, kind, settings
from e2e.harness.commands import Tools
from repo_tools import REPO_ROOT, contract

ROWS = contract.load()
log = logging.getLogger("e2e")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("e2e")
    group.addoption("--reuse-cluster", action="store_true", help="use the kind cluster of that name if it exists")
    group.addoption("--helm-bin", default=None, help="helm binary (default: helm on PATH)")
    group.addoption("--istioctl-bin", default=None, help="istioctl binary, used for diagnostics only")
    group.addoption("--diagnostics-dir", default="e2e-diagnostics", help="where failure diagnostics are written")
    group.addoption(
        "--gitops",
        action="store_true",
        help="install through the repo's GitOps agent syncing clusters/<tool>/e2e from a snapshot of this working "
        "tree served over Git, instead of applying the overlays directly",
    )
    group.addoption(
        "--local-control-plane",
        action="store_true",
        help="run on a local control plane (etcd, kube-apiserver, kwok, istiod) and real Envoy proxies in network "
        "namespaces instead of kind (e2e/controlplane; root, no Docker); also runs e2e/controlplane's own checks",
    )
    group.addoption(
        "--deploy-from",
        default=None,
        help="with --local-control-plane: apply the apps overlay of this other working tree (a mutated copy of the "
        "repo) while the tests read their expectations from this one",
    )


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """The local control plane's own checks (e2e/controlplane) run on the local control plane only, never on kind."""
    if collection_path.name == "controlplane" and collection_path.parent == Path(__file__).parent:
        return not config.getoption("local_control_plane") or None
    return None


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("cluster_name") == "pytest-kind":  # pytest-kind-ng's default: give ours a telling name
        config.option.cluster_name = settings.default_cluster_name()
    if any(Path(str(arg).split("::")[0]).name == "controlplane" for arg in config.args):
        config.option.local_control_plane = True  # asked for e2e/controlplane by path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The ACME check switches the Gateway to another certificate for a moment: it runs last, whatever the file names.
    items.sort(key=lambda item: item.path.name == "test_tls_acme.py")


def docker_info() -> tuple[int, str]:
    try:
        result = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return 1, str(error)
    return result.returncode, result.stderr or result.stdout


@pytest.fixture(scope="session")
def tools(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Tools:
    given = {
        "kind": request.config.getoption("kind_bin"),
        "kubectl": request.config.getoption("kind_kubectl_bin"),
        "helm": request.config.getoption("helm_bin"),
    }
    reason = bringup.missing_prerequisites(shutil.which, docker_info, given, request.config.getoption("gitops"))
    if reason:
        outcome, message = bringup.unavailable(reason, dict(os.environ))
        if outcome == "fail":
            pytest.fail(f"{message} (CI is set, so the e2e run must not be skipped)", pytrace=False)
        pytest.skip(message)
    found = {name: str(path or shutil.which(name)) for name, path in given.items()}  # all present: checked above
    return Tools(
        kind=found["kind"],
        kubectl=found["kubectl"],
        helm=found["helm"],
        istioctl=request.config.getoption("istioctl_bin") or shutil.which("istioctl"),
        kubeconfig=tmp_path_factory.mktemp("kind") / "kubeconfig",
    )


@pytest.fixture(scope="session")
def harness(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[bringup.Bringup]:
    """A kind cluster (or the local control plane) with Istio, cert-manager, the e2e overlay and the contract's
    clients, ready for traffic."""
    if request.config.getoption("local_control_plane"):
        yield from local_control_plane(request)
        return
    config = request.config
    tools: Tools = request.getfixturevalue("tools")
    e2e_settings = settings.load(config.getoption("cluster_name"))
    mismatch = bringup.version_mismatch(
        subprocess.run([tools.kind, "version"], capture_output=True, text=True).stdout, e2e_settings.kind_version
    )
    if mismatch:
        log.warning("%s; results may differ from CI", mismatch)
    cluster = KindCluster(
        e2e_settings.cluster_name,
        tools.kubeconfig,
        image=e2e_settings.node_image,
        kind_path=Path(tools.kind),
        kubectl_path=Path(tools.kubectl),
    )
    run = bringup.Bringup(tools, e2e_settings, ROWS)
    config.stash[FIGURES] = run.figures
    started = time.perf_counter()
    existing = subprocess.run([tools.kind, "get", "clusters"], capture_output=True, text=True).stdout.split()
    keep = config.getoption("keep_cluster")
    served = contextlib.ExitStack()
    try:
        with run.phase("create the kind cluster"):
            reuse = config.getoption("reuse_cluster") and e2e_settings.cluster_name in existing
            if e2e_settings.cluster_name in existing and not reuse:
                cluster.delete()
            if reuse:
                commands.run_checked(kind.export_kubeconfig_command(tools.kind, e2e_settings, tools.kubeconfig))
            else:
                kind_config = kind.write_kind_config(e2e_settings, tmp_path_factory.mktemp("kind-config"))
                kind.create_cluster(tools.kind, e2e_settings, kind_config, tools.kubeconfig)
            cluster.create()  # attaches pytest-kind-ng to the running cluster and its kubeconfig
        if config.getoption("gitops"):
            run.install_test_ca()
            run.serve_jwks()  # harness-owned, as without GitOps: before the agent syncs the apps layer
            snapshot, url, branch = serve_snapshot(served, tmp_path_factory.mktemp("gitops") / "repo")
            run.sync_with_gitops(snapshot, url, branch)
            run.install_apps(with_overlay=False)
        else:
            run.install_infrastructure()
            run.install_test_ca()
            run.serve_jwks()
            run.install_apps()
        run.wait_for_workloads()
        run.log_node_cpu()
    except Exception:
        write_diagnostics(request, run, cluster)
        if not keep:
            cluster.delete()
        served.close()
        raise
    finally:
        phases = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in run.timings)
        log.info("e2e bring-up took %.0fs: %s", time.perf_counter() - started, phases)
    yield run
    if request.session.testsfailed:
        write_diagnostics(request, run, cluster)
    if not keep:
        cluster.delete()
    served.close()


def local_control_plane(request: pytest.FixtureRequest) -> Iterator[bringup.Bringup]:
    from e2e.controlplane import harness as local  # imported here: the kind run needs none of it

    reason = local.unavailable()
    if reason:
        if os.environ.get(local.REQUIRE):
            pytest.fail(f"{reason} ({local.REQUIRE} is set, so this run must not be skipped)", pytrace=False)
        pytest.skip(reason)
    deployed_from = request.config.getoption("deploy_from")

    def bundle_if_failed() -> Path | None:
        failed = request.session.testsfailed
        return Path(request.config.getoption("diagnostics_dir")) / time.strftime("%Y%m%d-%H%M%S") if failed else None

    with local.local_harness(ROWS, Path(deployed_from) if deployed_from else None, bundle_if_failed) as run:
        request.config.stash[FIGURES] = run.figures
        yield run


FIGURES = pytest.StashKey[list[str]]()


def row_outcomes(reports: dict[str, list]) -> dict[str, set[str]]:
    """Each row of the contract by its outcome over all of its tests (their id is the row's name): failed when one
    failed, passed when one passed and none failed, skipped when every one skipped."""
    seen: dict[str, set[str]] = {}
    for outcome, listed in reports.items():
        for report in listed:
            row = report.nodeid.partition("[")[2].removesuffix("]") if hasattr(report, "nodeid") else ""
            counted = outcome in ("failed", "skipped", "error") or getattr(report, "when", "") == "call"
            if row in ROW_NAMES and outcome in ("passed", "failed", "skipped", "error") and counted:
                seen.setdefault(row, set()).add("failed" if outcome == "error" else outcome)
    outcomes: dict[str, set[str]] = {"passed": set(), "failed": set(), "skipped": set()}
    for row, kinds in seen.items():
        outcomes[next(kind for kind in ("failed", "passed", "skipped") if kind in kinds)].add(row)
    return outcomes


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    """The contract's rows first: how many held, failed and were skipped, on kind or on the local proxies."""
    outcomes = row_outcomes(terminalreporter.stats)
    if any(outcomes.values()):
        terminalreporter.write_sep("=", "contract rows")
        terminalreporter.write_line(
            "contract rows: " + ", ".join(f"{len(ids)} {kind}" for kind, ids in outcomes.items())
        )
    for figure in config.stash.get(FIGURES, []):
        terminalreporter.write_line(figure)


ROW_NAMES = {row.name for row in ROWS}


def serve_snapshot(stack: contextlib.ExitStack, destination: Path) -> tuple[Path, str, str]:
    """Commit the working tree, serve it where the kind nodes can reach the runner; (snapshot, its URL, branch)."""
    network = subprocess.run(
        ["docker", "network", "inspect", "kind", "--format", "{{range .IPAM.Config}}{{.Gateway}} {{end}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    host = gitops.ipv4_gateway(network)
    configured_url, branch = gitops.configured_source()
    port = gitops.free_port()
    url = f"http://{host}:{port}/"
    snapshot = gitops.snapshot(REPO_ROOT, destination, {configured_url: url} if configured_url else {}, branch)
    stack.enter_context(gitops.serve(snapshot, port=port))
    log.info("e2e serving a snapshot of this repo at %s (branch %s)", url, branch)
    return snapshot, url, branch


def write_diagnostics(request: pytest.FixtureRequest, run: bringup.Bringup, cluster: KindCluster) -> None:
    bundle = Path(request.config.getoption("diagnostics_dir")) / time.strftime("%Y%m%d-%H%M%S")
    agent_namespaces = {gitops.AGENTS[run.agent].namespace} if run.agent else set()
    jwks_namespaces = {run.jwks.namespace} if run.jwks else set()
    namespaces = sorted(
        {run.settings.app_namespace, run.settings.gateway.namespace, acme.NAMESPACE, *(s.namespace for s in run.stages)}
        | agent_namespaces
        | jwks_namespaces
    )
    pods = []
    for namespace in namespaces:
        result = subprocess.run(
            [
                run.tools.kubectl,
                f"--kubeconfig={run.tools.kubeconfig}",
                "-n",
                namespace,
                "get",
                "pods",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}{' '}{.spec.containers[*].name}{' '}{.spec.initContainers[*].name}{'\\n'}{end}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        for line in result.stdout.splitlines():
            name, *containers = line.split()
            pods.append((namespace, name, containers))
    planned = diagnostics.captures(
        run.tools, namespaces, pods, run.settings.gateway, run.settings.control_plane_namespace
    )
    kind_export = [run.tools.kind, "export", "logs", f"--name={cluster.name}"]
    diagnostics.collect(bundle, planned, kind_export)
    print(f"\ne2e diagnostics written to {bundle.resolve()}")


@pytest.fixture(scope="session")
def ca_file(harness: bringup.Bringup, tmp_path_factory: pytest.TempPathFactory) -> str:
    return harness.ca_file(tmp_path_factory.mktemp("ca"))
