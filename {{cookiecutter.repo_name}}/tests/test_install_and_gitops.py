"""The repo installs its own mesh in order, pinned to versions.env, and its GitOps entry points point at real paths."""

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import GATEWAY_API, gateway_api_only, istio_api_only, made_once, schema_problems

from repo_tools import REPO_ROOT, VERSIONS, gitops, install, layout
from repo_tools.resources import describe
from repo_tools.schemas import installed_crd_schemas, schema_errors

pytestmark = pytest.mark.database_independent

TOOL = install.gitops_tool()
ENVIRONMENTS = gitops.environments(TOOL)
INFRASTRUCTURE_OVERLAYS = sorted(
    path.parent.name for path in (REPO_ROOT / "infrastructure" / "overlays").glob("*/kustomization.yaml")
)
argocd_only = pytest.mark.skipif(TOOL != "argocd", reason="this repo syncs with Flux")
flux_only = pytest.mark.skipif(TOOL != "flux", reason="this repo syncs with Argo CD")


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    shutil.copytree(REPO_ROOT / "infrastructure", tmp_path / "infrastructure")
    shutil.copy(REPO_ROOT / "versions.env", tmp_path)
    return tmp_path


def test_every_environment_installs_istio_in_order_then_cert_manager():
    assert set(INFRASTRUCTURE_OVERLAYS) == set(layout.overlays())
    assert gitops.install_order_problems(sorted(layout.overlays())) == []


def test_an_environment_installing_istiod_out_of_order_is_caught(monkeypatch, tmp_path):
    copy = tmp_path / "infrastructure" / "overlays"
    shutil.copytree(REPO_ROOT / "infrastructure" / "overlays", copy)
    kustomization = copy / "dev" / "kustomization.yaml"
    istiod, after = "  - ../../istiod\n", "  - ../../istio-gateway\n" if not GATEWAY_API else "  - ../../cert-manager\n"
    kustomization.write_text(kustomization.read_text().replace(istiod, "").replace(after, after + istiod))
    monkeypatch.setattr(gitops, "REPO_ROOT", tmp_path)
    problems = gitops.install_order_problems(sorted(layout.overlays()) + ["qa"])
    assert problems == [
        "infrastructure/overlays/qa: there is no apps/overlays/qa, or the reverse",
        f"infrastructure/overlays/dev: resources must be {gitops.install_order()}, in this order",
    ]


def test_every_chart_is_pinned_to_versions_env():
    assert install.chart_problems() == []
    gateway_chart = set() if GATEWAY_API else {"gateway"}
    assert {chart.name for chart in install.charts()} == {"base", "cni", "istiod", "cert-manager"} | gateway_chart


def test_a_chart_left_on_another_istio_version_is_named(repo_copy: Path):
    kustomization = repo_copy / "infrastructure" / "istiod" / "kustomization.yaml"
    pinned = install.read_env_file(repo_copy / "versions.env")["ISTIO_VERSION"]
    kustomization.write_text(kustomization.read_text().replace(f"version: {pinned}", "version: 1.22.0"))
    assert install.chart_problems(repo_copy) == [
        f"infrastructure/istiod/kustomization.yaml chart istiod: version '1.22.0' is not ISTIO_VERSION={pinned} (versions.env)"
    ]


def test_the_gateway_is_installed_where_and_as_whom_the_policies_expect(gateway):
    assert install.gateway_identity_problems(gateway) == []


@istio_api_only
def test_a_gateway_installed_under_another_release_name_is_caught(repo_copy: Path, gateway):
    kustomization = repo_copy / "infrastructure" / "istio-gateway" / "kustomization.yaml"
    kustomization.write_text(
        kustomization.read_text().replace(f"releaseName: {gateway.service_account}", "releaseName: istio-moved")
    )
    problems = install.gateway_identity_problems(gateway, repo_copy)
    assert len(problems) == 1 and "make them agree" in problems[0]


@gateway_api_only
def test_the_gateway_api_crds_are_installed_once_at_the_pinned_version(gateway, repo_copy: Path):
    assert install.gateway_identity_problems(gateway) == []
    assert [version for _, version in install.gateway_api_releases()] == [VERSIONS["GATEWAY_API_VERSION"]]
    versions = repo_copy / "versions.env"
    pinned = VERSIONS["GATEWAY_API_VERSION"]
    versions.write_text(versions.read_text().replace(f"GATEWAY_API_VERSION={pinned}", "GATEWAY_API_VERSION=v1.6.0"))
    problems = install.gateway_identity_problems(gateway, repo_copy)
    assert len(problems) == 1 and "from the v1.6.0 release (GATEWAY_API_VERSION in versions.env)" in problems[0]
    assert [path.parent.name for path in install.pin_versions(repo_copy)] == ["gateway-api"]
    assert install.gateway_identity_problems(gateway, repo_copy) == []


def test_the_observability_add_ons_come_from_the_pinned_istio_release_and_follow_it(repo_copy: Path):
    pinned = VERSIONS["ISTIO_VERSION"]
    assert [version for _, version in install.istio_addons()] == [pinned] * 3
    assert install.addon_problems() == []
    versions = repo_copy / "versions.env"
    versions.write_text(versions.read_text().replace(f"ISTIO_VERSION={pinned}", "ISTIO_VERSION=1.31.2"))
    problems = install.addon_problems(repo_copy)
    assert len(problems) == 3 and all(f"from {pinned}; take it from 1.31.2" in problem for problem in problems)
    assert "observability-addons" in {path.parent.name for path in install.pin_versions(repo_copy)}
    assert install.addon_problems(repo_copy) == []
    # Not in any environment by default: building it needs the network.
    assert not any("observability-addons" in gitops.environment_components(name) for name in layout.overlays())


def test_only_the_e2e_environment_exposes_the_gateway_on_fixed_node_ports(monkeypatch, tmp_path):
    environments = sorted(layout.overlays())
    assert [name for name in environments if "kind-node-ports" in gitops.environment_components(name)] == ["e2e"]
    shutil.copytree(REPO_ROOT / "infrastructure" / "overlays", tmp_path / "infrastructure" / "overlays")
    shutil.copytree(REPO_ROOT / "apps" / "overlays", tmp_path / "apps" / "overlays")
    layer = "apps" if GATEWAY_API else "infrastructure"
    prod = tmp_path / layer / "overlays" / "prod" / "kustomization.yaml"
    text = prod.read_text()
    prod.write_text(
        text.replace("components:\n", "components:\n  - ../../components/kind-node-ports\n", 1)
        if GATEWAY_API
        else text.replace("components: [", "components: [../../components/kind-node-ports, ")
    )
    monkeypatch.setattr(gitops, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(gitops, "INFRASTRUCTURE", tmp_path / "infrastructure")
    assert gitops.install_order_problems(environments) == [
        "prod: kind-node-ports opens the gateway on fixed ports of every node; it is for the e2e cluster only"
    ]


@istio_api_only
def test_the_gateway_namespace_does_not_opt_out_of_injection(gateway):
    """The gateway's pods ask for injection themselves; a namespace label of `disabled` would overrule them."""
    namespaces = [doc for doc in install.plain_resources() if doc["kind"] == "Namespace"]
    gateway_namespace = next(doc for doc in namespaces if doc["metadata"]["name"] == gateway.namespace)
    assert (gateway_namespace["metadata"].get("labels") or {}).get("istio-injection") != "disabled"


def test_no_file_of_the_other_gitops_tool_remains():
    other = {"argocd": "flux", "flux": "argocd"}[TOOL]
    assert not (REPO_ROOT / "clusters" / other).exists()
    assert (REPO_ROOT / "infrastructure" / "flux").exists() == (TOOL == "flux")


# --- Argo CD ----------------------------------------------------------------------------------


@argocd_only
@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_argocd_entry_points_build_validate_and_point_at_real_paths(environment):
    docs = made_once(f"entry points {environment}", lambda: gitops.argocd_entry_points(environment))
    assert schema_problems(docs) == []
    assert gitops.entry_point_problems(docs) == []
    assert {path for _, path in gitops.entry_point_paths(docs)} == {
        f"clusters/argocd/{environment}/applications",
        f"infrastructure/overlays/{environment}",
        f"apps/overlays/{environment}",
    }


def application_syncing(docs: list[dict], path: str) -> dict:
    return next(doc for doc in docs if doc["kind"] == "Application" and doc["spec"]["source"]["path"] == path)


@argocd_only
@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_argocd_syncs_the_mesh_before_the_app_from_this_repo_only(environment):
    docs = made_once(f"entry points {environment}", lambda: gitops.argocd_entry_points(environment))
    assert gitops.argocd_order_problems(docs, environment) == []
    apps = application_syncing(docs, f"apps/overlays/{environment}")
    apps["metadata"]["annotations"][gitops.SYNC_WAVE] = "-5"
    apps["spec"]["source"]["repoURL"] = "https://example.com/someone-else.git"
    assert gitops.argocd_order_problems(docs, environment) == [
        f"{describe(apps)}: must belong to this repo's AppProject and pull only from its repo",
        f"clusters/argocd/{environment}: the infrastructure must sync in an earlier wave than the apps",
    ]


@argocd_only
@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_an_application_whose_destination_its_project_does_not_allow_is_caught(environment):
    docs = made_once(f"entry points {environment}", lambda: gitops.argocd_entry_points(environment))
    assert gitops.destinations_allowed(docs) == []
    infrastructure = application_syncing(docs, f"infrastructure/overlays/{environment}")
    infrastructure["spec"]["destination"].pop("namespace")
    assert gitops.destinations_allowed(docs) == [
        f"{describe(infrastructure)}: destination https://kubernetes.default.svc namespace '' is not one its "
        "AppProject allows; Argo CD would refuse it and the root would wait for it for ever"
    ]


@argocd_only
def test_argocd_is_told_to_render_helm_charts():
    assert "--enable-helm" in gitops.argocd_settings()["kustomize.buildOptions"]


def test_the_argocd_schema_catches_unknown_sync_options_and_missing_fields():
    application = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {"name": "app"},
        "spec": {
            "destination": {"server": "https://kubernetes.default.svc"},
            "source": {"repoURL": "https://example.com/r.git", "path": "apps", "targetRevison": "main"},
            "syncPolicy": {"syncOptions": ["ServerSideApply=yes"]},
        },
    }
    errors = schema_errors(application)
    assert any("'project' is a required property" in error for error in errors)
    assert "Application app: spec.source.targetRevison: unknown field" in errors
    if ("argoproj.io/v1alpha1", "Application") not in installed_crd_schemas():
        # Only the hand-written fallback knows Argo CD's sync options; the CRD types them as strings.
        assert any(error.startswith("Application app: spec.syncPolicy.syncOptions.0:") for error in errors)


# --- Flux -------------------------------------------------------------------------------------


@flux_only
def test_flux_helm_releases_build_validate_and_follow_the_install_order(gateway):
    docs = gitops.flux_install([])
    assert schema_problems(docs) == []
    assert install.helm_release_problems(docs, gateway) == []


@flux_only
@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_flux_entry_points_validate_point_at_real_paths_and_wait_for_the_mesh(environment):
    docs = gitops.entry_point_documents(REPO_ROOT / "clusters" / "flux" / environment)
    assert schema_problems(docs) == []
    assert gitops.flux_order_problems(docs, environment) == []
    apps = next(doc for doc in docs if doc["metadata"]["name"] == "apps")
    apps["spec"].pop("dependsOn")
    assert gitops.flux_order_problems(docs, environment) == [
        f"clusters/flux/{environment}/apps.yaml: must dependOn infrastructure"
    ]


@flux_only
@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_flux_installs_each_environment_with_the_components_of_its_overlay(environment):
    docs = gitops.entry_point_documents(REPO_ROOT / "clusters" / "flux" / environment)
    assert gitops.flux_components_problems(docs, environment) == []
    infrastructure = next(doc for doc in docs if doc["metadata"]["name"] == "infrastructure")
    infrastructure["spec"]["components"] = ["flux/components/kind-node-ports", "flux/components/no-such-part"]
    assert gitops.flux_components_problems(docs, environment) == [
        f"clusters/flux/{environment}/infrastructure.yaml: components ['kind-node-ports', 'no-such-part'], but "
        f"infrastructure/overlays/{environment} lists {gitops.overlay_components(environment)}"
    ]


@flux_only
@istio_api_only
def test_flux_components_install_what_their_kustomize_twins_do(gateway, repo_copy):
    assert gitops.flux_twins_problems(gateway) == []
    assert gitops.flux_twins_problems(gateway, repo_copy / "infrastructure") == []
    high_availability = (
        repo_copy / "infrastructure" / "flux" / "components" / "gateway-high-availability" / "kustomization.yaml"
    )
    high_availability.write_text(high_availability.read_text().replace("minReplicas: 2", "minReplicas: 3"))
    node_ports = repo_copy / "infrastructure" / "flux" / "components" / "kind-node-ports" / "kustomization.yaml"
    node_ports.write_text(node_ports.read_text().replace("nodePort: 30443", "nodePort: 30444"))
    problems = gitops.flux_twins_problems(gateway, repo_copy / "infrastructure")
    assert [problem.split(":")[0] for problem in problems] == [
        "infrastructure/flux/components/gateway-high-availability",
        "infrastructure/flux/components/kind-node-ports",
    ]
    assert "'minReplicas': 3" in problems[0] and "30444" in problems[1]


@pytest.mark.bake_independent
def test_flux_schemas_catch_an_unknown_field():
    kustomization = {
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
        "kind": "Kustomization",
        "metadata": {"name": "apps", "namespace": "flux-system"},
        "spec": {
            "interval": "10m",
            "path": "./apps",
            "prune": True,
            "sourceRef": {"kind": "GitRepository", "name": "x"},
            "dependOn": [],
        },
    }
    assert schema_errors(kustomization) == ["Kustomization flux-system/apps: spec.dependOn: unknown field"]


def test_a_helm_release_that_skips_the_install_order_is_caught(gateway):
    release = {
        "kind": "HelmRelease",
        "metadata": {"name": gateway.service_account, "namespace": gateway.namespace},
        "spec": {"chart": {"spec": {"chart": "gateway", "version": "1.0.0", "sourceRef": {"name": "istio"}}}},
    }
    problems = install.helm_release_problems([release], gateway)
    assert f"HelmRelease {gateway.service_account}: chart version '1.0.0' is not pinned by versions.env" in problems
    if GATEWAY_API:
        assert f"HelmRelease {gateway.service_account}: istiod deploys the gateway; remove the release" in problems
    else:
        assert f"HelmRelease {gateway.service_account}: must dependOn istiod" in problems
    assert "HelmRelease istio-base: set install.crds Create and upgrade.crds CreateReplace" in problems


def test_pinning_rewrites_every_chart_to_a_new_istio_version(repo_copy: Path):
    versions = repo_copy / "versions.env"
    old = install.read_env_file(versions)["ISTIO_VERSION"]
    versions.write_text(versions.read_text().replace(f"ISTIO_VERSION={old}", "ISTIO_VERSION=1.31.0"))
    istio_charts = {"istio-base", "istio-cni", "istiod"} | (set() if GATEWAY_API else {"istio-gateway"})
    assert len(install.chart_problems(repo_copy)) == len(istio_charts)
    changed = install.pin_versions(repo_copy)
    assert install.chart_problems(repo_copy) == []
    assert {path.parent.name for path in changed} >= istio_charts
    if (repo_copy / "infrastructure" / "flux").exists():
        docs = gitops.flux_install([], repo_copy / "infrastructure")
        assert install.helm_release_problems(docs, layout.ingress_gateway(), repo_copy) == []
    assert install.pin_versions(repo_copy) == []


def test_the_readme_installs_the_gitops_agent_at_the_version_versions_env_pins():
    pinned = {"argocd": "ARGOCD_VERSION", "flux": "FLUX_VERSION"}[TOOL]
    sourced = subprocess.run(
        ["sh", "-c", f". ./versions.env && echo ${pinned}"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert sourced.stdout.strip() == VERSIONS[pinned] and VERSIONS[pinned].startswith("v")
    readme = (REPO_ROOT / "README.md").read_text()
    if TOOL == "argocd":
        assert "argo-cd/${ARGOCD_VERSION}/manifests/install.yaml" in readme
    else:
        assert "--token-auth" in readme and "GITHUB_TOKEN" in readme
