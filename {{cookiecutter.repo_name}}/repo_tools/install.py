"""The Istio and cert-manager install (infrastructure/), checked offline: its charts and their pins.

The helmCharts kustomizations need chart downloads to build, so they are checked as files: every chart
pinned to versions.env, its values file present, and the ingress gateway installed exactly where and as
whom apps/base/ingress-gateway.env says. Flux's HelmReleases, the same install in Flux's terms, are held
to the same pins and order. The GitOps entry points (clusters/) are repo_tools.gitops's.
"""

import argparse
from dataclasses import dataclass
from pathlib import Path

from repo_tools import REPO_ROOT, edge, read_env_file, read_yaml_documents, read_yaml_file
from repo_tools.charts import GATEWAY_API_RELEASE, ISTIO_ADDON, ISTIO_CHART_REPOSITORY
from repo_tools.layout import IngressGateway

PINNED_BY_REPOSITORY = {ISTIO_CHART_REPOSITORY: "ISTIO_VERSION", "https://charts.jetstack.io": "CERT_MANAGER_VERSION"}
PINNED_BY_SOURCE = {"istio": "ISTIO_VERSION", "jetstack": "CERT_MANAGER_VERSION"}
BUILT_IN_LOG_PROVIDERS = {"envoy"}  # pkg/config/mesh/mesh.go
GATEWAY_TELEMETRY = "ingress-gateway-access-logs"


@dataclass(frozen=True)
class Chart:
    directory: Path
    name: str
    repo: str
    version: str
    release: str
    namespace: str
    values_file: Path
    values: dict

    @property
    def where(self) -> str:
        return f"infrastructure/{self.directory.name}/kustomization.yaml chart {self.name}"


def gitops_tool(root: Path = REPO_ROOT) -> str:
    tools = sorted(path.name for path in (root / "clusters").iterdir() if path.is_dir())
    if len(tools) != 1:
        raise LookupError(f"expected one GitOps tool under clusters/, found {tools}")
    return tools[0]


def charts(root: Path = REPO_ROOT) -> list[Chart]:
    found = []
    for kustomization in sorted((root / "infrastructure").glob("*/kustomization.yaml")):
        for entry in read_yaml_file(kustomization).get("helmCharts", []):
            values_file = kustomization.parent / entry.get("valuesFile", "")
            values = read_yaml_file(values_file) if values_file.is_file() else {}
            found.append(
                Chart(
                    kustomization.parent,
                    entry["name"],
                    entry.get("repo", ""),
                    str(entry.get("version", "")),
                    entry.get("releaseName", ""),
                    entry.get("namespace", ""),
                    values_file,
                    values,
                )
            )
    return found


def plain_resources(root: Path = REPO_ROOT) -> list[dict]:
    """The install layer's own manifests beside its charts (namespaces, the IngressClass), as both tools apply them."""
    found = []
    for kustomization in sorted((root / "infrastructure").glob("*/kustomization.yaml")):
        for entry in read_yaml_file(kustomization).get("resources", []):
            path = kustomization.parent / entry
            if path.is_file():
                found += [doc for doc in read_yaml_documents(path) if doc]
    return found


def chart(name: str, root: Path = REPO_ROOT) -> Chart:
    """The one chart of that name (base, istiod, gateway, cert-manager) the install layer installs."""
    found = [chart for chart in charts(root) if chart.name == name]
    if len(found) != 1:
        raise LookupError(f"infrastructure/: expected one {name} chart, found {len(found)}")
    return found[0]


def chart_problems(root: Path = REPO_ROOT) -> list[str]:
    versions = read_env_file(root / "versions.env")
    problems = []
    for chart in charts(root):
        pin = PINNED_BY_REPOSITORY.get(chart.repo)
        if pin is None:
            problems.append(f"{chart.where}: repository {chart.repo!r} has no version pin in versions.env")
        elif chart.version != versions[pin]:
            problems.append(f"{chart.where}: version {chart.version!r} is not {pin}={versions[pin]} (versions.env)")
        if not chart.values_file.is_file():
            problems.append(f"{chart.where}: valuesFile {chart.values_file.name!r} does not exist")
    return problems


def webhook_failure_policy_is_fixed(charts: list[Chart]) -> list[str]:
    """Istio's notes for `helm template` with server-side apply: pin the validating webhook to Fail."""
    return [
        f"{chart.values_file.relative_to(chart.directory.parent.parent)}: set base.validationFailurePolicy: Fail; "
        "otherwise every sync sets the webhook back to Ignore and istiod flips it to Fail again"
        for chart in charts
        if chart.name in ("base", "istiod")
        and (chart.values.get("base") or {}).get("validationFailurePolicy") != "Fail"
    ]


def gateway_api_releases(root: Path = REPO_ROOT) -> list[tuple[Path, str]]:
    """(kustomization, version) of every Gateway API CRD release the install layer lists."""
    return [
        (kustomization, match["version"])
        for kustomization in sorted((root / "infrastructure").glob("*/kustomization.yaml"))
        for resource in read_yaml_file(kustomization).get("resources", [])
        if (match := GATEWAY_API_RELEASE.fullmatch(str(resource)))
    ]


def istio_addons(root: Path = REPO_ROOT) -> list[tuple[Path, str]]:
    """(component, version) of every Istio sample add-on the install layer's components list."""
    return [
        (kustomization, match["version"])
        for kustomization in sorted((root / "infrastructure" / "components").glob("*/kustomization.yaml"))
        for resource in read_yaml_file(kustomization).get("resources", [])
        if (match := ISTIO_ADDON.fullmatch(str(resource)))
    ]


def addon_problems(root: Path = REPO_ROOT) -> list[str]:
    """The add-ons come from the Istio release the repo installs, so their dashboards read its metrics."""
    pinned = read_env_file(root / "versions.env")["ISTIO_VERSION"]
    return [
        f"{path.relative_to(root)}: an Istio add-on from {version}; take it from {pinned} (ISTIO_VERSION in "
        "versions.env), or run python -m repo_tools.install"
        for path, version in istio_addons(root)
        if version != pinned
    ]


def mesh_config_problems(root: Path = REPO_ROOT) -> list[str]:
    """istiod's meshConfig as the apps layer and the contract read it: paths normalized as edge.NORMALIZATION, every
    access-log provider a Telemetry names defined, the gateway's log carrying the request id, the route and the
    token's subject, and no log format reading a token, a cookie or the query string."""
    values_file = root / "infrastructure" / "istiod" / "values.yaml"
    where = values_file.relative_to(root)
    mesh_config = read_yaml_file(values_file).get("meshConfig") or {}
    problems = []
    normalization = (mesh_config.get("pathNormalization") or {}).get("normalization", "BASE (Istio's default)")
    if normalization != edge.NORMALIZATION:
        problems.append(
            f"{where}: meshConfig.pathNormalization.normalization is {normalization}; the traffic contract and the "
            f"gateway's policies are read with {edge.NORMALIZATION} (repo_tools/edge.py)"
        )
    formats = {
        provider.get("name"): provider["envoyFileAccessLog"].get("logFormat") or {}
        for provider in mesh_config.get("extensionProviders") or []
        if "envoyFileAccessLog" in provider
    }
    for name, log_format in formats.items():
        for field, command in (log_format.get("labels") or {"text": log_format.get("text", "")}).items():
            problems += [f"{where}: access log {name} field {field}: {leak}" for leak in edge.log_leaks(str(command))]
    telemetry_file = root / "apps" / "base" / "observability" / "access-logs.yaml"
    header = subject_header(root)
    required = edge.gateway_log_commands(header)
    if not header:
        problems.append(
            f"{REQUEST_AUTHENTICATION}: no jwtRules entry writes the token's subject (claim sub) to a header "
            "(outputClaimToHeaders); the gateway's access log reads the subject from it"
        )
        required.pop("the token's subject")
    for telemetry in read_yaml_documents(telemetry_file):
        for logging in (telemetry or {}).get("spec", {}).get("accessLogging") or []:
            for provider in logging.get("providers") or []:
                name, named_by = provider.get("name"), f"Telemetry {telemetry['metadata']['name']}"
                if name not in {*formats, *BUILT_IN_LOG_PROVIDERS}:
                    problems.append(
                        f"{telemetry_file.relative_to(root)}: {named_by} names access log provider {name}, which "
                        f"{where} does not define"
                    )
                elif telemetry["metadata"]["name"] == GATEWAY_TELEMETRY:
                    commands = set((formats.get(name, {}).get("labels") or {}).values())
                    problems += [
                        f"{where}: access log {name}, which {named_by} gives the gateway, has no field for {what} "
                        f"({command})"
                        for what, command in required.items()
                        if command not in commands
                    ]
    return problems


REQUEST_AUTHENTICATION = "apps/base/edge-auth/request-authentication.yaml"


def subject_header(root: Path) -> str:
    """The request header the gateway's RequestAuthentication writes a verified token's subject to."""
    authentication = read_yaml_file(root / REQUEST_AUTHENTICATION)
    return next(
        (
            str(output.get("header", ""))
            for rule in (authentication.get("spec") or {}).get("jwtRules") or []
            for output in rule.get("outputClaimToHeaders") or []
            if output.get("claim") == "sub"
        ),
        "",
    )


def gateway_identity_problems(gateway: IngressGateway, root: Path = REPO_ROOT) -> list[str]:
    """With the Gateway API, its CRDs are installed at the pinned version and istiod deploys the gateway; else the
    gateway chart installs the ServiceAccount, namespace and pod label the apps layer trusts."""
    gateways = [chart for chart in charts(root) if chart.repo == ISTIO_CHART_REPOSITORY and chart.name == "gateway"]
    if gateway.gateway_api:
        pinned = read_env_file(root / "versions.env").get("GATEWAY_API_VERSION")
        releases = gateway_api_releases(root)
        problems = [
            f"{chart.where}: istiod deploys the gateway for the Gateway; remove the chart" for chart in gateways
        ]
        if [version for _, version in releases] != [pinned]:
            problems.append(
                f"infrastructure/: install the Gateway API CRDs once, from the {pinned} release "
                f"(GATEWAY_API_VERSION in versions.env); found {[f'{path.parent.name}: {v}' for path, v in releases]}"
            )
        return problems
    if len(gateways) != 1:
        return [f"infrastructure/: expected one Istio gateway chart, found {len(gateways)}"]
    chart = gateways[0]
    service_account = chart.values.get("serviceAccount", {}).get("name") or chart.release
    label = chart.values.get("labels", {}).get("istio") or chart.release.removeprefix("istio-")
    installed = IngressGateway(chart.namespace, service_account, istio_label=label)
    if installed != gateway:
        return [
            f"{chart.where}: installs the gateway as {installed}, but apps/base/ingress-gateway.env says {gateway}; "
            "make them agree"
        ]
    return []


def helm_release_problems(docs: list[dict], gateway: IngressGateway, root: Path = REPO_ROOT) -> list[str]:
    """Flux's HelmReleases pin the same versions, depend in install order and read generated values."""
    versions = read_env_file(root / "versions.env")
    releases = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "HelmRelease"}
    config_maps = {
        (doc["metadata"].get("namespace"), doc["metadata"]["name"]) for doc in docs if doc["kind"] == "ConfigMap"
    }
    problems = []
    for name, release in releases.items():
        spec = release["spec"]
        chart = spec["chart"]["spec"]
        pin = PINNED_BY_SOURCE.get(chart["sourceRef"]["name"])
        if pin is None or str(chart.get("version")) != versions[pin]:
            problems.append(f"HelmRelease {name}: chart version {chart.get('version')!r} is not pinned by versions.env")
        for source in spec.get("valuesFrom", []):
            if (release["metadata"].get("namespace"), source["name"]) not in config_maps:
                problems.append(f"HelmRelease {name}: valuesFrom ConfigMap {source['name']} is not in the build")
        for dependency in spec.get("dependsOn", []):
            if dependency["name"] not in releases:
                problems.append(f"HelmRelease {name}: dependsOn {dependency['name']}, which is not in the build")
    order = {"istio-cni": ["istio-base"], "istiod": ["istio-base", "istio-cni"]} | (
        {} if gateway.gateway_api else {gateway.service_account: ["istiod"]}
    )
    for name, needed in order.items():
        depends_on = [dependency["name"] for dependency in releases.get(name, {}).get("spec", {}).get("dependsOn", [])]
        problems += [
            f"HelmRelease {name}: must dependOn {needs}"
            for needs in needed
            if name in releases and needs not in depends_on
        ]
    base = releases.get("istio-base", {}).get("spec", {})
    if base.get("install", {}).get("crds") != "Create" or base.get("upgrade", {}).get("crds") != "CreateReplace":
        problems.append("HelmRelease istio-base: set install.crds Create and upgrade.crds CreateReplace")
    gateway_release = releases.get(gateway.service_account)
    if gateway.gateway_api:
        if gateway_release is not None:
            problems.append(f"HelmRelease {gateway.service_account}: istiod deploys the gateway; remove the release")
    elif gateway_release is None or gateway_release["metadata"].get("namespace") != gateway.namespace:
        problems.append(
            f"HelmRelease {gateway.service_account} in {gateway.namespace} (apps/base/ingress-gateway.env) is missing"
        )
    return problems


def pin_versions(root: Path = REPO_ROOT) -> list[Path]:
    """Rewrite every chart version (helmCharts and Flux HelmReleases), the Gateway API CRDs' release and the
    Istio add-ons' release to versions.env; returns the changed files."""
    versions = read_env_file(root / "versions.env")
    replacements: dict[Path, list[tuple[str, str]]] = {}
    for chart in charts(root):
        pinned = versions[PINNED_BY_REPOSITORY[chart.repo]]
        if chart.version != pinned:
            replacements.setdefault(chart.directory / "kustomization.yaml", []).append(
                (f"version: {chart.version}\n", f"version: {pinned}\n")
            )
    releases = root / "infrastructure" / "flux" / "releases.yaml"
    if releases.is_file():
        for release in [doc for doc in read_yaml_documents(releases) if doc]:
            chart = release["spec"]["chart"]["spec"]
            pinned = versions[PINNED_BY_SOURCE[chart["sourceRef"]["name"]]]
            if str(chart["version"]) != pinned:
                replacements.setdefault(releases, []).append(
                    (f'version: "{chart["version"]}"\n', f'version: "{pinned}"\n')
                )
    for kustomization, version in gateway_api_releases(root):
        if version != versions.get("GATEWAY_API_VERSION", version):
            replacements.setdefault(kustomization, []).append(
                (f"/download/{version}/", f"/download/{versions['GATEWAY_API_VERSION']}/")
            )
    for component, version in istio_addons(root):
        if version != versions["ISTIO_VERSION"]:
            replacements.setdefault(component, []).append(
                (f"/istio/istio/{version}/", f"/istio/istio/{versions['ISTIO_VERSION']}/")
            )
    for path, pairs in replacements.items():
        text = path.read_text()
        for old, new in pairs:
            text = text.replace(old, new)
        path.write_text(text)
    return sorted(replacements)


if __name__ == "__main__":
    argparse.ArgumentParser(
        prog="python -m repo_tools.install",
        description="Set every chart, HelmRelease, Gateway API release and Istio add-on of infrastructure/ to the "
        "versions in versions.env, and name the files it changed.",
    ).parse_args()
    changed = pin_versions()
    for path in changed:
        print(f"pinned {path.relative_to(REPO_ROOT)}")
    print("every chart already matches versions.env" if not changed else "review and commit the change")
