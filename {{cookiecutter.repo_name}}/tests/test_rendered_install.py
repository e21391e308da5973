"""The install layer as its Helm charts really render it: what the e2e run and the apps layer rely on holds.

Renders every infrastructure overlay with real Helm, or offline from recorded renders ($RECORDED_FIXTURES);
without either these tests skip and say why.
"""

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from conftest import GATEWAY_API, built, gateway_api_only, istio_api_only, made_once, schema_problems

from e2e.harness import bringup, capacity, install_plan, kind, settings
from repo_tools import (
    REPO_ROOT,
    charts,
    gateway_api,
    gitops,
    injection,
    install,
    kustomize,
    layout,
    pod_security,
    rendered_install,
)

UNAVAILABLE = charts.unavailable_reason()
if os.environ.get(charts.RECORDED_FIXTURES) and UNAVAILABLE:
    raise RuntimeError(UNAVAILABLE)  # recordings were asked for but are unusable: an error, not a skip
pytestmark = pytest.mark.skipif(bool(UNAVAILABLE), reason=UNAVAILABLE or "charts available")
OVERLAYS = sorted(layout.overlays())


def infrastructure(overlay: str) -> list[dict]:
    return made_once(f"render {overlay}", lambda: charts.render(REPO_ROOT / "infrastructure" / "overlays" / overlay))


def apps(overlay: str) -> list[dict]:
    return built(overlay)


def installed(overlay: str) -> list[dict]:
    """What runs: the charts' objects, plus what istiod deploys for the apps layer's Gateway (Gateway API)."""
    return infrastructure(overlay) + gateway_api.deployed_gateway(apps(overlay), layout.ingress_gateway())


@pytest.fixture(scope="module")
def e2e_settings() -> settings.Settings:
    return settings.load("rendered-install-test")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_infrastructure_overlay_renders_and_validates(overlay):
    docs = infrastructure(overlay)
    assert {doc["kind"] for doc in docs} >= {"CustomResourceDefinition", "Deployment", "Service"}
    assert schema_problems(docs) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_runs_where_and_as_whom_the_apps_layer_trusts(overlay, gateway):
    assert rendered_install.the_gateway_is_installed_as_the_apps_layer_expects(installed(overlay), gateway) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_gateway_selector_selects_the_real_gateway_pods(overlay, gateway):
    assert rendered_install.selectors_select_the_gateway_pods(installed(overlay), apps(overlay), gateway) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_api_token_rule_names_the_port_the_gateway_pods_really_listen_on(overlay, gateway):
    docs = apps(overlay)
    assert rendered_install.policies_name_ports_the_gateway_listens_on(installed(overlay), docs, gateway) == []
    rule = next(doc for doc in docs if doc["metadata"]["name"] == "api-requires-a-token")["spec"]["rules"][0]
    rule["to"][0]["operation"]["ports"] = ["8443"]
    problems = rendered_install.policies_name_ports_the_gateway_listens_on(installed(overlay), docs, gateway)
    assert len(problems) == 1 and "not ['8443'], so the rule never matches there" in problems[0]


@istio_api_only
def test_a_gateway_selecting_another_label_is_caught(gateway):
    docs = apps("e2e")
    assert rendered_install.selectors_select_the_gateway_pods(infrastructure("e2e"), docs, gateway) == []
    next(doc for doc in docs if doc["kind"] == "Gateway")["spec"]["selector"] = {"istio": "ingress"}
    problems = rendered_install.selectors_select_the_gateway_pods(infrastructure("e2e"), docs, gateway)
    assert len(problems) == 1 and "does not select the gateway pods" in problems[0]


def test_a_gateway_moved_in_the_apps_settings_alone_is_caught_against_the_real_install():
    """Helm release names and istiod's names cannot come from a kustomize setting: this rule ties the two layers."""
    real = layout.ingress_gateway()
    moved = layout.IngressGateway("edge", "public-edge", real.istio_label, real.gateway_name)
    problems = rendered_install.the_gateway_is_installed_as_the_apps_layer_expects(installed("e2e"), moved)
    assert problems == [
        "no Deployment in edge runs as ServiceAccount public-edge (apps/base/ingress-gateway.env): "
        "the gateway chart, or istiod for the Gateway, deploys it elsewhere or under another name"
    ]
    relabelled = layout.IngressGateway(
        real.namespace, real.service_account, "edge" if real.istio_label else "", "edge" if GATEWAY_API else ""
    )
    problems = rendered_install.the_gateway_is_installed_as_the_apps_layer_expects(installed("e2e"), relabelled)
    assert len(problems) == 1 and "its pods carry {" in problems[0] and f"not {relabelled.pod_labels}" in problems[0]


def test_the_e2e_gateway_service_listens_on_the_node_ports_kind_maps(e2e_settings, gateway):
    mapped = {80: e2e_settings.http_node_port, 443: e2e_settings.https_node_port}
    config = kind.kind_config(e2e_settings)
    assert {m["containerPort"] for m in config["nodes"][0]["extraPortMappings"]} == set(mapped.values())
    assert rendered_install.node_ports_match_the_kind_mappings(installed("e2e"), gateway, mapped) == []
    assert install_plan.node_port_mismatch(installed("e2e"), e2e_settings) == ""


def test_the_harness_finds_the_gateways_service_by_the_labels_of_its_pods(gateway):
    """The chart's Service selects more labels than the one the repo names the pods by: a subset, not equality."""
    docs = [doc for doc in installed("e2e") if doc["metadata"].get("namespace") == gateway.namespace]
    deployment = next(
        doc for doc in docs if doc["kind"] == "Deployment" and doc["metadata"]["name"] == gateway.deployment
    )
    pod = {"metadata": {"labels": deployment["spec"]["template"]["metadata"]["labels"]}}
    services = [doc for doc in docs if doc["kind"] == "Service"]
    found = bringup.service_in_front_of(services, [pod], gateway.deployment)
    assert found["metadata"]["name"] == gateway.deployment
    with pytest.raises(RuntimeError, match=f"no Service selects the pods of {gateway.deployment}"):
        bringup.service_in_front_of(services, [{"metadata": {"labels": {"app": "another"}}}], gateway.deployment)


@gateway_api_only
def test_a_gateway_option_on_a_port_no_listener_has_is_caught(e2e_settings, gateway):
    docs = apps("e2e")
    options = next(doc for doc in docs if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].endswith("-options"))
    options["data"]["service"] = options["data"]["service"].replace("port: 443", "port: 8443")
    broken = infrastructure("e2e") + gateway_api.deployed_gateway(docs, gateway)
    mapped = {80: e2e_settings.http_node_port, 443: e2e_settings.https_node_port}
    problems = rendered_install.node_ports_match_the_kind_mappings(broken, gateway, mapped)
    assert len(problems) == 1 and "port 443 has nodePort None, but kind maps" in problems[0]
    assert "fix apps/components/kind-node-ports/gateway-options.yaml" in install_plan.node_port_mismatch(
        broken, e2e_settings
    )
    options["data"]["services"] = options["data"].pop("service")
    with pytest.raises(ValueError, match=r"keys Istio refuses: \['services'\]"):
        gateway_api.deployed_gateway(docs, gateway)


@gateway_api_only
def test_the_model_of_istiods_gateway_follows_the_kube_gateway_template_of_the_recorded_istiod():
    """deployed_gateway is a model, not a render: the facts it relies on are read here from the real template."""
    recorded = charts.recordings()
    if recorded is None:
        pytest.skip(f"the istiod chart's templates come from {charts.RECORDED_FIXTURES}")
    render = kustomize.parse(recorded.render("istiod", install.chart("istiod").version).read_text())
    injector = next(doc for doc in render if doc["metadata"]["name"] == "istio-sidecar-injector")
    template = yaml.safe_load(injector["data"]["config"])["templates"]["kube-gateway"]
    parts = dict(
        (part.split("\nkind: ", 1)[1].split("\n", 1)[0], part) for part in template.split("\n---\n") if "kind: " in part
    )
    deployed = {
        doc["kind"]: doc for doc in installed("e2e") if doc["metadata"]["name"] == layout.ingress_gateway().deployment
    }
    assert set(parts) == set(deployed) | {"HorizontalPodAutoscaler", "PodDisruptionBudget"}  # those two on request
    for object_kind, part in parts.items():
        name = ".ServiceAccount" if object_kind == "ServiceAccount" else ".DeploymentName"
        assert f"name: {{{{{name} | quote}}}}" in part, object_kind
    pod_labels = deployed["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for label in ("sidecar.istio.io/inject", "service.istio.io/canonical-name", "gateway.istio.io/managed"):
        assert f'"{label}"' in parts["Deployment"] and label in pod_labels
    service = deployed["Service"]["spec"]
    assert "protocol: TCP" in parts["Service"] and {port["protocol"] for port in service["ports"]} == {"TCP"}
    assert f"ipFamilyPolicy: {service['ipFamilyPolicy']}" in parts["Service"]
    assert "type: {{ .ServiceType | quote }}" in parts["Service"]
    assert "maxReplicas: 1" in parts["HorizontalPodAutoscaler"]
    assert "gateway.networking.k8s.io/gateway-name:" in parts["PodDisruptionBudget"]


@istio_api_only
def test_a_node_port_patch_without_protocol_is_caught(e2e_settings, gateway, tmp_path):
    """kustomize merges Service ports on port + protocol: without `protocol: TCP` the node ports are dropped."""
    patch = REPO_ROOT / "infrastructure" / "components" / "kind-node-ports" / "gateway-nodeports.yaml"
    service = yaml.safe_load(patch.read_text())
    for port in service["spec"]["ports"]:
        del port["protocol"]
    copy_root = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "infrastructure", copy_root / "infrastructure", ignore=shutil.ignore_patterns("charts"))
    (copy_root / "infrastructure" / "components" / "kind-node-ports" / "gateway-nodeports.yaml").write_text(
        yaml.safe_dump(service)
    )
    broken = charts.render(copy_root / "infrastructure" / "overlays" / "e2e", copy_root)
    mapped = {80: e2e_settings.http_node_port, 443: e2e_settings.https_node_port}
    problems = rendered_install.node_ports_match_the_kind_mappings(broken, gateway, mapped)
    assert len(problems) == 2 and all("nodePort None" in problem for problem in problems)
    assert "fix infrastructure/components/kind-node-ports/gateway-nodeports.yaml" in install_plan.node_port_mismatch(
        broken, e2e_settings
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_high_availability_overlays_change_the_real_autoscaler_and_budget(overlay, gateway):
    problems = rendered_install.high_availability_holds(installed(overlay), gateway)
    if gitops.HIGH_AVAILABILITY in gitops.environment_components(overlay):
        assert problems == []
    else:  # the same rule, over a single-pod overlay, says so: it can fail
        assert any("runs 1 pod at minimum, not 2" in problem for problem in problems)


def test_every_deployment_the_bringup_waits_for_is_installed(e2e_settings):
    waits = [
        (stage.namespace, name) for stage in install_plan.install_stages(e2e_settings) for name in stage.deployments
    ]
    assert len(waits) == (4 if GATEWAY_API else 5)
    if GATEWAY_API:  # istiod deploys it once the apps layer is applied; the bring-up waits for it then
        waits.append((e2e_settings.gateway.namespace, e2e_settings.gateway.deployment))
    assert rendered_install.waited_for_deployments_exist(installed("e2e"), waits) == []
    assert rendered_install.waited_for_deployments_exist(infrastructure("e2e"), [("cert-manager", "cert-manager-x")])


def test_the_install_stages_cover_every_rendered_object_in_order(e2e_settings):
    stages = install_plan.install_stages(e2e_settings)
    split = install_plan.split_by_stage(infrastructure("e2e"), stages)
    assert sum(len(part) for part in split) == len(infrastructure("e2e"))
    first = {doc["kind"] for doc in split[0]}
    assert {"Namespace", "CustomResourceDefinition", "MutatingWebhookConfiguration"} <= first
    if GATEWAY_API:  # istiod and cert-manager watch the Gateway API's kinds from their start
        assert "gateways.gateway.networking.k8s.io" in {doc["metadata"]["name"] for doc in split[0]}
    else:
        gateway_stage = {(doc["kind"], doc["metadata"]["name"]) for doc in split[1]}
        assert ("Deployment", install.chart("gateway").release) in gateway_stage


@pytest.mark.parametrize("chart", install.charts(), ids=lambda chart: chart.name)
def test_every_key_a_values_file_sets_is_a_value_of_its_chart(chart):
    recorded = charts.recordings()
    if recorded is None:
        pytest.skip(f"the charts' default values come from {charts.RECORDED_FIXTURES}")
    assert rendered_install.values_keys_exist(chart, recorded) == []


def test_a_misspelt_value_is_named():
    recorded = charts.recordings()
    if recorded is None:
        pytest.skip(f"the charts' default values come from {charts.RECORDED_FIXTURES}")
    cert_manager = install.chart("cert-manager")
    typo = install.Chart(**{**cert_manager.__dict__, "values": {"webhook": {"replicaCont": 2}, "crd": {}}})
    problems = rendered_install.values_keys_exist(typo, recorded)
    assert [problem.split(": ")[1].split(" ")[0] for problem in problems] == ["webhook.replicaCont", "crd"]


def test_the_e2e_run_fits_a_two_cpu_runner(e2e_settings):
    total, by_pod, proxy = install_plan.e2e_cpu_requests(installed("e2e"), apps("e2e"), e2e_settings)
    print(f"e2e CPU requests: {total}m of {capacity.RUNNER_CPU_MILLIS}m: {by_pod}")
    assert total <= capacity.BUDGET_MILLIS, by_pod
    # Every harness pod that gets a sidecar asks for the e2e overlay's small one, not istiod's default.
    harness_pods = [pod for pod in by_pod if pod.startswith("Pod ")]
    assert harness_pods and all(by_pod[pod] < proxy for pod in harness_pods)


def test_python_m_repo_tools_checks_what_the_e2e_run_relies_on(e2e_settings):
    assert install_plan.rendered_install_problems(installed("e2e"), apps("e2e"), e2e_settings) == []
    overloaded = apps("e2e")
    for doc in overloaded:
        if doc["kind"] == "Deployment":
            doc["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "1"
    problems = install_plan.rendered_install_problems(installed("e2e"), overloaded, e2e_settings)
    assert len(problems) == 1 and f"more than the {capacity.BUDGET_MILLIS}m of a 2-vCPU runner" in problems[0]


@pytest.mark.bake_independent
def test_the_recorded_helm_refuses_a_release_or_version_it_has_no_recording_of():
    recorded = charts.recordings()
    if recorded is None:
        pytest.skip(f"the stand-in answers from {charts.RECORDED_FIXTURES}")
    istiod = install.chart("istiod")
    chart_dir = f"/charts/istiod-{istiod.version}/istiod"
    rendered = charts.recorded_helm(["template", istiod.release, chart_dir, "--namespace", istiod.namespace], recorded)
    assert "kind: Deployment" in rendered
    with pytest.raises(charts.ChartsUnavailable, match="record it again"):
        charts.recorded_helm(["template", "edge", chart_dir, "--namespace", "edge"], recorded)
    with pytest.raises(charts.ChartsUnavailable, match="no recorded render of chart cert-manager v0.1.0"):
        charts.recorded_helm(["template", "cert-manager", "/c/cert-manager-v0.1.0/cert-manager"], recorded)


@pytest.mark.skipif(install.gitops_tool() != "argocd", reason="this repo syncs with Flux")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_argo_cd_finds_the_install_healthy_without_metrics_server_or_load_balancer(overlay):
    settings = gitops.argocd_settings()
    docs = infrastructure(overlay)
    assert {"HorizontalPodAutoscaler", "Service"} <= {doc["kind"] for doc in docs}
    assert gitops.install_settles_without_metrics_or_load_balancer(settings, docs) == []
    without_hpa_check = {key: value for key, value in settings.items() if "HorizontalPodAutoscaler" not in key}
    problems = gitops.install_settles_without_metrics_or_load_balancer(without_hpa_check, docs)
    assert problems and all("no health check for HorizontalPodAutoscaler" in problem for problem in problems)


@pytest.mark.skipif(install.gitops_tool() != "argocd", reason="this repo syncs with Flux")
@istio_api_only
def test_a_load_balancer_service_not_marked_optional_would_hold_the_waves_back():
    docs = infrastructure("dev")
    service = next(doc for doc in docs if doc["kind"] == "Service" and doc["spec"].get("type") == "LoadBalancer")
    service["metadata"]["annotations"] = {}
    problems = gitops.install_settles_without_metrics_or_load_balancer(gitops.argocd_settings(), docs)
    assert problems == [
        f"Service {service['metadata']['namespace']}/{service['metadata']['name']}: reads Progressing (waiting for "
        "a load-balancer address) without metrics-server or a load-balancer provider, and would hold the sync "
        "waves back"
    ]


@pytest.mark.bake_independent
@pytest.mark.skipif(charts.recordings() is None, reason="only renders of recorded charts are kept")
def test_a_render_is_kept_until_a_file_of_the_install_layer_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(charts, "CACHE_DIR", tmp_path / "cache")
    renders = []

    def numbered_render(relative: Path, root: Path) -> list[dict]:  # every other test renders for real
        renders.append(relative)
        return [{"kind": "Rendered", "metadata": {"name": f"render {len(renders)}"}}]

    monkeypatch.setattr(charts, "render_now", numbered_render)
    copy_root = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "infrastructure", copy_root / "infrastructure", ignore=shutil.ignore_patterns("charts"))
    overlay = copy_root / "infrastructure" / "overlays" / "dev"
    first = charts.render(overlay, copy_root)
    assert charts.render(overlay, copy_root) == first and len(renders) == 1
    (kept,) = (tmp_path / "cache" / "renders").glob("*.json")
    kept.write_text('[{"kind": "Kept", "metadata": {"name": "from-the-cache"}}]')
    assert charts.render(overlay, copy_root) == [{"kind": "Kept", "metadata": {"name": "from-the-cache"}}]
    values = copy_root / "infrastructure" / "istiod" / "values.yaml"
    values.write_text(values.read_text() + "\n")
    assert charts.render(overlay, copy_root) == [{"kind": "Rendered", "metadata": {"name": "render 2"}}]


@pytest.mark.bake_independent
@pytest.mark.skipif(charts.recordings() is None, reason="only renders of recorded charts are kept")
def test_two_runs_asking_for_the_same_render_at_once_render_it_once(tmp_path, monkeypatch):
    monkeypatch.setattr(charts, "CACHE_DIR", tmp_path / "cache")
    renders = []

    def slow_render(relative: Path, root: Path) -> list[dict]:
        renders.append(relative)
        time.sleep(0.5)  # the other run asks meanwhile
        return [{"kind": "Rendered", "metadata": {"name": str(relative)}}]

    monkeypatch.setattr(charts, "render_now", slow_render)
    overlay = REPO_ROOT / "infrastructure" / "overlays" / "dev"
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda _: charts.render(overlay), range(2))
    assert first == second and len(renders) == 1


@pytest.mark.bake_independent
def test_environments_whose_install_reads_the_same_files_share_one_render(tmp_path, monkeypatch):
    monkeypatch.setattr(charts, "CACHE_DIR", tmp_path / "cache")
    renders = []

    def counted_render(relative: Path, root: Path) -> list[dict]:
        renders.append(relative)
        return [{"kind": "Rendered", "metadata": {"name": str(relative)}}]

    monkeypatch.setattr(charts, "render_now", counted_render)
    copy_root = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "infrastructure", copy_root / "infrastructure", ignore=shutil.ignore_patterns("charts"))
    overlays = copy_root / "infrastructure" / "overlays"
    shutil.copytree(overlays / "dev", overlays / "qa")
    qa = overlays / "qa" / "kustomization.yaml"
    spec = yaml.safe_load(qa.read_text())
    qa.write_text("# The install for qa, written out anew\n" + yaml.safe_dump(spec, default_flow_style=True))
    assert charts.render(overlays / "qa", copy_root) == charts.render(overlays / "dev", copy_root)
    assert len(renders) == 1  # the same kustomization in other words and another folder
    qa.write_text(yaml.safe_dump(spec | {"commonLabels": {"environment": "qa"}}))
    charts.render(overlays / "qa", copy_root)
    assert len(renders) == 2


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_install_namespace_enforces_the_strictest_level_its_pods_allow(overlay):
    assert pod_security.install_namespace_problems(installed(overlay)) == []


def test_a_namespace_labelled_stricter_than_its_pods_allow_is_caught():
    docs = installed("dev")
    levels = {doc["metadata"]["name"]: pod_security.enforced(doc) for doc in docs if doc["kind"] == "Namespace"}
    assert levels["istio-system"] == "privileged" and levels["cert-manager"] == "restricted"
    for doc in docs:
        if doc["kind"] == "Namespace" and doc["metadata"]["name"] == "istio-system":
            doc["metadata"]["labels"][pod_security.ENFORCE] = "baseline"
    problems = pod_security.install_namespace_problems(docs)
    assert len(problems) == 1
    assert "its pods admit under privileged at most: DaemonSet istio-system/istio-cni-node" in problems[0]
    assert "hostPath volumes are not allowed" in problems[0]


def test_the_injection_model_follows_the_sidecar_template_of_the_rendered_istiod():
    docs = infrastructure("dev")
    assert injection.template_problems(docs) == []
    for doc in docs:
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == injection.INJECTOR_CONFIGMAP:
            doc["data"]["config"] = doc["data"]["config"].replace("istio-validation", "istio-check")
    problems = injection.template_problems(docs)
    assert len(problems) == 1 and "with the CNI agent the init container only validates" in problems[0]
