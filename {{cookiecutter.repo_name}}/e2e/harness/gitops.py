"""The GitOps run: the cluster installs itself the way a user's would, with Argo CD or Flux syncing this repo.

The harness commits the working tree to a scratch repository, serves it over Git's smart HTTP protocol on the
runner (the kind nodes reach the runner at their Docker network's gateway), installs the pinned agent, applies
the e2e entry point (clusters/<tool>/e2e) and waits until the agent reports the whole install converged.
"""

import ipaddress
import json
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler

from dulwich.repo import Repo
from dulwich.server import BackendRepo, DictBackend
from dulwich.web import GunzipFilter, HTTPGitApplication, LimitedInputFilter, make_server

from repo_tools import VERSIONS, gitops, install, kustomize, repo_files

E2E_ENVIRONMENT = "e2e"
# Flux's release manifests carry every controller; this repo's entry points need these three, and the other
# four would ask a 2-CPU runner for 350m more CPU.
FLUX_CONTROLLERS = ("source-controller", "kustomize-controller", "helm-controller")
ENTRY_POINT_FIELD_MANAGER = "e2e-entry-point"


def agent_manifests_url(tool: str) -> str:
    """The pinned agent's own install manifests, as each project publishes them for a release."""
    if tool == "argocd":
        return f"https://raw.githubusercontent.com/argoproj/argo-cd/{VERSIONS['ARGOCD_VERSION']}/manifests/install.yaml"
    return f"https://github.com/fluxcd/flux2/releases/download/{VERSIONS['FLUX_VERSION']}/install.yaml"


def agent_manifests(tool: str, published: str) -> list[dict]:
    """The agent's release manifests as this repo needs them: Flux without the controllers it does not use."""
    docs = kustomize.parse(published)
    if tool == "flux":
        docs = [doc for doc in docs if doc["kind"] != "Deployment" or doc["metadata"]["name"] in FLUX_CONTROLLERS]
    return docs


def configured_source() -> tuple[str, str]:
    """(Git URL, branch) this repo's Argo CD Applications pull from; Flux's bootstrap writes its own source."""
    if install.gitops_tool() != "argocd":
        return "", "main"
    application = next(doc for doc in gitops.argocd_entry_points(E2E_ENVIRONMENT) if doc["kind"] == "Application")
    return application["spec"]["source"]["repoURL"], application["spec"]["source"]["targetRevision"]


def ipv4_gateway(docker_network_gateways: str) -> str:
    """The IPv4 gateway of kind's Docker network: the address its nodes reach the runner at."""
    for address in docker_network_gateways.split():
        if isinstance(ipaddress.ip_address(address), ipaddress.IPv4Address):
            return address
    raise RuntimeError(
        f"kind's Docker network has no IPv4 gateway (docker network inspect kind: {docker_network_gateways!r})"
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return int(probe.getsockname()[1])


def snapshot(source: Path, destination: Path, replacements: dict[str, str], branch: str) -> Path:
    """The working tree as one commit on `branch` of a new repository, with each replacement made in its files."""
    for name in repo_files(source):
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, destination / name)
    for path in destination.rglob("*"):
        if path.is_file() and path.suffix in (".yaml", ".yml"):
            text = path.read_text()
            for old, new in replacements.items():
                text = text.replace(old, new)
            path.write_text(text)
    git = ["git", "-C", str(destination), "-c", "user.name=e2e", "-c", "user.email=e2e@localhost"]
    subprocess.run([*git, "init", "-q", "-b", branch], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "e2e snapshot"], check=True)
    return destination


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@contextmanager
def serve(repository: Path, host: str = "0.0.0.0", port: int = 0) -> Iterator[int]:  # noqa: S104 - kind's nodes connect
    """Serve one repository over Git's smart HTTP protocol at http://<host>:<port>/ until the block ends."""
    repositories: dict[str, BackendRepo] = {"/": Repo(str(repository))}
    git = HTTPGitApplication(DictBackend(repositories))
    git.handlers.pop(b"git-receive-pack")  # fetch only: nobody who reaches the port can push into the snapshot
    app = LimitedInputFilter(GunzipFilter(git))
    server = make_server(host, port, app, handler_class=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


def flux_source(url: str, branch: str) -> dict:
    """The GitRepository that `flux bootstrap` would create, pointing at the served snapshot."""
    return {
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "GitRepository",
        "metadata": {"name": "flux-system", "namespace": AGENTS["flux"].namespace},
        "spec": {"interval": "1m", "url": url, "ref": {"branch": branch}},
    }


@dataclass(frozen=True)
class Agent:
    namespace: str
    reports: str  # the kind whose objects say whether the sync converged
    resource: str  # that kind, as kubectl names it


AGENTS = {
    "argocd": Agent("argocd", "Application", "applications.argoproj.io"),
    "flux": Agent("flux-system", "Kustomization", "kustomizations.kustomize.toolkit.fluxcd.io"),
}


def pause_commands(tool: str, names: list[str], paused: bool) -> list[list[str]]:
    """kubectl arguments that stop (or resume) the agent's reconciliation of the named objects: Argo CD skips an
    Application annotated skip-reconcile (since v2.7); Flux skips a suspended Kustomization."""
    if tool == "argocd":
        annotation = "argocd.argoproj.io/skip-reconcile"
        change = f"{annotation}=true" if paused else f"{annotation}-"
        return [["annotate", "--overwrite", *names, change]] if names else []
    patch = json.dumps({"spec": {"suspend": paused}})
    return [["patch", name, "--type=merge", "-p", patch] for name in names]


@dataclass(frozen=True)
class Convergence:
    done: bool
    status: str


def application_convergence(application: dict) -> Convergence:
    """An Argo CD Application has converged when it is Synced and Healthy and its last sync succeeded."""
    status = application.get("status") or {}
    sync = (status.get("sync") or {}).get("status", "Unknown")
    health = (status.get("health") or {}).get("status", "Unknown")
    operation = status.get("operationState") or {}
    phase = operation.get("phase", "none")
    done = sync == "Synced" and health == "Healthy" and phase in ("Succeeded", "none")
    message = operation.get("message", "")
    return Convergence(done, f"{application['metadata']['name']}: {sync}, {health}, sync {phase} {message}".strip())


def kustomization_convergence(kustomization: dict) -> Convergence:
    """A Flux Kustomization has converged when its Ready condition is True for the revision it last fetched."""
    conditions = (kustomization.get("status") or {}).get("conditions") or []
    ready: dict = next((c for c in conditions if c.get("type") == "Ready"), {})
    done = ready.get("status") == "True"
    reason = f"{ready.get('reason', 'no Ready condition yet')}: {ready.get('message', '')}".rstrip(": ")
    return Convergence(done, f"{kustomization['metadata']['name']}: {reason}")


def converged(tool: str, objects: list[dict], expected: list[str]) -> Convergence:
    """Whether every expected Application (Argo CD) or Kustomization (Flux) has converged, and the laggards."""
    judge = application_convergence if tool == "argocd" else kustomization_convergence
    by_name = {obj["metadata"]["name"]: judge(obj) for obj in objects}
    missing = [f"{name}: not created yet" for name in expected if name not in by_name]
    lagging = [c.status for name, c in sorted(by_name.items()) if name in expected and not c.done]
    return Convergence(not (missing or lagging), "; ".join(missing + lagging) or "all converged")
