"""Where things are in this repo, and the settings that more than one layer reads."""

from dataclasses import dataclass
from pathlib import Path

from repo_tools import REPO_ROOT, RepoFileError, named, read_env_file, read_yaml_file
from repo_tools.resources import principal

APPS = REPO_ROOT / "apps"
INGRESS_GATEWAY_SETTINGS = APPS / "base" / "ingress-gateway.env"


GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"


@dataclass(frozen=True)
class IngressGateway:
    """Where the ingress gateway runs and who it is. With the Gateway API, Istio deploys it for the Gateway
    named `gateway_name` (pods labelled with that name, ServiceAccount <name>-istio); with Istio's own API,
    the gateway chart deploys it (pods labelled istio=<istio_label>, ServiceAccount = release name)."""

    namespace: str
    service_account: str
    istio_label: str = ""
    gateway_name: str = ""

    @property
    def principal(self) -> str:
        return principal(self.namespace, self.service_account)

    @property
    def gateway_api(self) -> bool:
        return bool(self.gateway_name)

    @property
    def deployment(self) -> str:
        """Both ways name the gateway's Deployment as its ServiceAccount (release name; <gateway>-<class>)."""
        return self.service_account

    @property
    def selector(self) -> str:
        return ",".join(f"{key}={value}" for key, value in self.pod_labels.items())

    @property
    def pod_labels(self) -> dict[str, str]:
        """The label every pod of the gateway carries and everything that selects them uses."""
        return {GATEWAY_NAME_LABEL: self.gateway_name} if self.gateway_api else {"istio": self.istio_label}


def ingress_gateway(settings: Path = INGRESS_GATEWAY_SETTINGS) -> IngressGateway:
    """The gateway's namespace and ServiceAccount, from the file kustomize reads them from too."""
    values = read_env_file(settings)
    missing = [key for key in ("namespace", "serviceAccount") if not values.get(key)]
    if missing:
        raise RepoFileError(
            f"{named(settings)} sets no {' and no '.join(missing)}: every layer reads the gateway from it"
        )
    return IngressGateway(
        namespace=values["namespace"],
        service_account=values["serviceAccount"],
        istio_label=values.get("istioLabel", ""),
        gateway_name=values.get("gatewayName", ""),
    )


def overlays() -> dict[str, Path]:
    """The apps layer's deployable overlays by name ("dev", "e2e", ...)."""
    return {path.parent.name: path.parent for path in sorted((APPS / "overlays").glob("*/kustomization.yaml"))}


def app_kustomizations() -> dict[str, Path]:
    """The apps layer's base and every overlay, by name ("base", "dev", ...)."""
    return {"base": APPS / "base"} | overlays()


def setting(kustomization_dir: Path, generator: str, key: str, base: Path = APPS / "base") -> str:
    """A setting an overlay gives in its configMapGenerator `generator` (merged over the base's), else the base's."""
    for directory in (kustomization_dir, base):
        kustomization = read_yaml_file(directory / "kustomization.yaml")
        for entry in kustomization.get("configMapGenerator", []):
            literals = dict(literal.split("=", 1) for literal in entry.get("literals", []))
            if entry.get("name") == generator and key in literals:
                return literals[key]
    raise LookupError(f"no {generator} setting {key} in {kustomization_dir} or the base")


def public_host(kustomization_dir: Path, base: Path = APPS / "base") -> str:
    return setting(kustomization_dir, "public-host", "host", base)


@dataclass(frozen=True)
class ApiTokens:
    """Who signs the tokens the API requires, and where the gateway reads that issuer's keys."""

    issuer: str
    jwks_uri: str


def api_tokens(kustomization_dir: Path, base: Path = APPS / "base") -> ApiTokens:
    return ApiTokens(
        setting(kustomization_dir, "api-tokens", "issuer", base),
        setting(kustomization_dir, "api-tokens", "jwksUri", base),
    )
