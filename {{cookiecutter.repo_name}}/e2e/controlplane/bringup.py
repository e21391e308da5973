"""The same bring-up as on kind, from the repo's own files, onto the local control plane: the install layer in its
stages (rendered by real Helm with the repo's values), istiod started once its objects are in, then the e2e overlay,
every object applied server-side, each phase timed."""

import base64
import copy
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trustme
import yaml

from e2e.controlplane.cluster import ControlPlane
from e2e.harness import install_plan, tls
from e2e.harness.settings import E2E_OVERLAY, INFRASTRUCTURE_OVERLAY, Settings, e2e_build
from repo_tools import REPO_ROOT, charts, kustomize

FIELD_MANAGER = "local-control-plane"
ROLLOUT_SECONDS = 180
# What the local run leaves out of the rendered install: istiod's own workload, as istiod runs as the local
# pilot-discovery process (README.md lists this and what else the local run leaves out).
ISTIOD = "istiod"
ISTIOD_WORKLOAD_KINDS = ("Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget")
# istiod's webhook configurations, as the charts name them, and the path istiod serves each at.
ISTIOD_WEBHOOK_PATHS = {"MutatingWebhookConfiguration": "/inject", "ValidatingWebhookConfiguration": "/validate"}


@dataclass
class LocalBringup:
    plane: ControlPlane
    settings: Settings
    test_ca: trustme.CA = field(default_factory=trustme.CA)
    applied: dict[str, list[dict]] = field(default_factory=dict)  # stage name -> the documents the server accepted
    istiod_hosts: Path | None = None  # with the data plane: the hosts file istiod resolves the cluster's names with
    deployed_from: Path | None = None  # another working tree whose apps overlay is applied (a mutated copy)

    timings: list[tuple[str, float]] = field(default_factory=list)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            seconds = time.monotonic() - started
            self.timings.append((name, seconds))
            print(f"  {seconds:6.1f}s  {name}", flush=True)

    def apply(self, docs: list[dict]) -> None:
        if docs:
            self.plane.kubectl(
                "apply",
                "--server-side",
                "--force-conflicts",
                f"--field-manager={FIELD_MANAGER}",
                "-f",
                "-",
                stdin=yaml.safe_dump_all(docs),
            )

    def render_install(self) -> list[dict]:
        with self.phase(f"render {INFRASTRUCTURE_OVERLAY.name} with real helm"):
            return charts.render(INFRASTRUCTURE_OVERLAY)

    def install(self) -> None:
        docs = self.render_install()
        stages = install_plan.install_stages(self.settings)
        webhook_port = 0
        for stage, stage_docs in zip(stages, install_plan.split_by_stage(docs, stages), strict=True):
            local = local_documents(stage_docs, self.settings.control_plane_namespace)
            if self.istiod_hosts is not None:
                local = [without_istio_stats(doc) for doc in local]
            with self.phase(f"install {stage.name}"):
                crds = [doc for doc in local if doc["kind"] == "CustomResourceDefinition"]
                self.apply(crds)  # first, and established, so that the stage's own custom resources are understood
                if crds:
                    self.plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", *names(crds))
                webhooks = [doc for doc in local if doc["kind"] in ISTIOD_WEBHOOK_PATHS]
                self.apply([doc for doc in local if doc not in crds and doc not in webhooks])
                if any(doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "istio" for doc in local):
                    webhook_port = self.start_istiod()  # it reads the mesh config and injector templates just applied
                self.apply([pointed_at_local_istiod(doc, webhook_port) for doc in webhooks])
                self.applied[stage.name] = local
                for deployment in stage.deployments:
                    if (stage.namespace, deployment) != (self.settings.control_plane_namespace, ISTIOD):
                        self.rollout(stage.namespace, "deployment", deployment)
                for daemonset in stage.daemonsets:
                    self.rollout(stage.namespace, "daemonset", daemonset)

    def start_istiod(self) -> int:
        """istiod needs its mesh ConfigMap and injector templates in place; its webhooks are applied right after."""
        with self.phase("start istiod (pilot-discovery)"):
            return self.plane.start_istiod(self.settings.control_plane_namespace, self.istiod_hosts)

    def rollout(self, namespace: str, kind: str, name: str) -> None:
        self.plane.kubectl("-n", namespace, "rollout", "status", f"{kind}/{name}", f"--timeout={ROLLOUT_SECONDS}s")

    def install_apps(self) -> None:
        with self.phase("apply apps/overlays/e2e" + (f" of {self.deployed_from}" if self.deployed_from else "")):
            docs = (
                kustomize.build(self.deployed_from / E2E_OVERLAY.relative_to(REPO_ROOT))
                if self.deployed_from
                else e2e_build()
            )
            ca_secret = tls.ca_secret_manifest(
                self.test_ca, self.settings.test_ca_secret, self.settings.gateway.namespace
            )
            self.apply([yaml.safe_load(ca_secret), *docs])
        with self.phase("issue the overlay's Certificates from the test CA, as cert-manager's CA Issuer would"):
            self.apply([self.issued(certificate) for certificate in docs if certificate["kind"] == "Certificate"])
        with self.phase("wait for the app's rollouts"):
            namespace = self.settings.app_namespace
            self.provide_volumes(namespace)
            listed = json.loads(
                self.plane.kubectl("-n", namespace, "get", "deployments,statefulsets", "-o", "json").stdout
            )
            for workload in listed["items"]:
                self.rollout(namespace, workload["kind"].lower(), workload["metadata"]["name"])

    def issued(self, certificate: dict) -> dict:
        """The kubernetes.io/tls secret cert-manager would write for the Certificate (its controller does not run)."""
        spec = certificate["spec"]
        leaf = self.test_ca.issue_cert(*(spec.get("dnsNames") or [spec.get("commonName", "")]))
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {"name": spec["secretName"], "namespace": certificate["metadata"]["namespace"]},
            "data": {
                "tls.crt": base64.b64encode(b"".join(blob.bytes() for blob in leaf.cert_chain_pems)).decode(),
                "tls.key": base64.b64encode(leaf.private_key_pem.bytes()).decode(),
                "ca.crt": base64.b64encode(self.test_ca.cert_pem.bytes()).decode(),
            },
        }

    def provide_volumes(self, namespace: str) -> None:
        """A PersistentVolume for each claim a StatefulSet makes, bound to it: kind has a local-path provisioner,
        this control plane none. Nothing is stored in it (no container runs)."""
        deadline = time.monotonic() + ROLLOUT_SECONDS
        expected = sum(
            len(item["spec"].get("volumeClaimTemplates") or []) * item["spec"].get("replicas", 1)
            for item in json.loads(self.plane.kubectl("-n", namespace, "get", "statefulsets", "-o", "json").stdout)[
                "items"
            ]
        )
        claims: list[dict] = []
        while len(claims) < expected and time.monotonic() < deadline:
            time.sleep(0.5)
            claims = json.loads(self.plane.kubectl("-n", namespace, "get", "pvc", "-o", "json").stdout)["items"]
        self.apply([volume_for(claim) for claim in claims if not claim["spec"].get("volumeName")])


def names(docs: list[dict]) -> list[str]:
    return [doc["metadata"]["name"] for doc in docs]


def local_documents(docs: list[dict], control_plane_namespace: str) -> list[dict]:
    """The stage's documents less what the local run leaves out: istiod's workload, cert-manager's webhooks."""
    kept = []
    for doc in docs:
        meta = doc.get("metadata", {})
        if doc["kind"] in ISTIOD_WORKLOAD_KINDS and (meta.get("namespace"), meta.get("name")) == (
            control_plane_namespace,
            ISTIOD,
        ):
            continue
        if doc["kind"] in ISTIOD_WEBHOOK_PATHS and is_cert_manager(doc):
            continue  # its webhook does not run here: Certificates and Issuers are admitted by their CRDs alone
        kept.append(doc)
    return kept


def without_istio_stats(doc: dict) -> dict:
    """The mesh config without its default metrics provider, for which istiod adds Istio's own `istio.stats` filter
    to every listener; the data plane's upstream Envoy lacks it (README.md lists the difference)."""
    if doc["kind"] != "ConfigMap" or doc["metadata"]["name"] != "istio" or "mesh" not in (doc.get("data") or {}):
        return doc
    mesh = yaml.safe_load(doc["data"]["mesh"]) or {}
    (mesh.get("defaultProviders") or {}).pop("metrics", None)
    changed = copy.deepcopy(doc)
    changed["data"]["mesh"] = yaml.safe_dump(mesh)
    return changed


def is_cert_manager(doc: dict) -> bool:
    labels = doc.get("metadata", {}).get("labels") or {}
    return labels.get("app.kubernetes.io/instance") == "cert-manager" or "cert-manager" in doc["metadata"]["name"]


def pointed_at_local_istiod(doc: dict, port: int) -> dict:
    """An istiod webhook configuration calls the local istiod at https://localhost:<port> instead of its Service,
    as the charts render it with istiodRemote.injectionURL / base.validationURL; istiod fills in the CA bundle."""
    if doc["kind"] not in ISTIOD_WEBHOOK_PATHS or not port:
        return doc
    pointed = copy.deepcopy(doc)
    for webhook in pointed.get("webhooks") or []:
        service = (webhook.get("clientConfig") or {}).pop("service", None)
        if service is not None:
            path = service.get("path") or ISTIOD_WEBHOOK_PATHS[doc["kind"]]
            webhook["clientConfig"]["url"] = f"https://localhost:{port}{path}"
    return pointed


def volume_for(claim: dict) -> dict:
    name = f"local-{claim['metadata']['namespace']}-{claim['metadata']['name']}"
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name[:253]},
        "spec": {
            "capacity": {"storage": claim["spec"]["resources"]["requests"]["storage"]},
            "accessModes": claim["spec"]["accessModes"],
            "storageClassName": claim["spec"].get("storageClassName") or "",
            "hostPath": {"path": f"/tmp/{name}"},
            "claimRef": {"namespace": claim["metadata"]["namespace"], "name": claim["metadata"]["name"]},
        },
    }
