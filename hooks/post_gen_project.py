"""Drop what the answers turned off and write the per-environment entry points. Runs offline."""

import json
import re
import shutil
from pathlib import Path

ANSWERS: dict = json.loads(r"""{{ cookiecutter | tojson }}""")
GITOPS_TOOLS = ("argocd", "flux")
# Files only one GitOps tool reads, besides its clusters/<tool> entry points.
TOOL_ONLY_FILES = {"flux": ("infrastructure/kustomization.yaml", "infrastructure/flux")}


def remove(*relative_paths: str) -> None:
    for relative in relative_paths:
        path = Path(relative)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def remove_database() -> None:
    remove("apps/components/database")


def remove_other_ingress_api() -> None:
    """With the Gateway API, Istio deploys the gateway and the apps layer says how; otherwise its chart does."""
    if ANSWERS["ingress_api"] == "gateway-api":
        remove(
            "apps/base/gateway/virtualservice.yaml",
            "infrastructure/istio-gateway",
            "infrastructure/istiod/ingress-class.yaml",
            *(
                f"infrastructure/{flux}components/{component}"
                for flux in ("", "flux/")
                for component in ("gateway-high-availability", "kind-node-ports")
            ),
        )
    else:
        remove(
            "apps/base/gateway/gateway-options.yaml",
            "apps/base/gateway/https-redirect.yaml",
            "apps/base/gateway/httproute.yaml",
            "apps/components/gateway-high-availability",
            "apps/components/kind-node-ports",
            "infrastructure/gateway-api",
            "clusters/argocd/settings/health/gateway.lua",
        )


def remove_other_gitops_tools() -> None:
    for tool in GITOPS_TOOLS:
        if tool != ANSWERS["gitops_tool"]:
            remove(f"clusters/{tool}", *TOOL_ONLY_FILES.get(tool, ()))


def expand_components(text: str, components: list[str]) -> str:
    """The components token, with the path written before it, becomes that path once per component."""
    token = re.escape(ANSWERS["_stamp"]["components"])
    return re.sub(rf"([\w./-]*){token}", lambda match: ", ".join(match[1] + name for name in components), text)


def stamp_environments() -> None:
    """Write each `_environment` directory once per environment of the table in cookiecutter.json."""
    for template in sorted(Path().glob("**/_environment")):
        # Components the install layer has: with the Gateway API, the gateway's options are in the apps layer.
        available = {path.name for path in Path().glob("infrastructure/**/components/*") if path.is_dir()}
        for environment, components in ANSWERS["_environments"].items():
            target = template.with_name(environment)
            for source in sorted(path for path in template.rglob("*") if path.is_file()):
                text = source.read_text().replace(ANSWERS["_stamp"]["environment"], environment)
                destination = target / source.relative_to(template)
                destination.parent.mkdir(parents=True, exist_ok=True)
                destination.write_text(expand_components(text, [c for c in components if c in available]))
        shutil.rmtree(template)


def main() -> None:
    if not ANSWERS["include_database"]:
        remove_database()
    remove_other_gitops_tools()
    remove_other_ingress_api()
    stamp_environments()
    if ANSWERS["_gateway_namespace"] == "istio-system":  # the control plane's namespace, made by istio-base/
        remove("infrastructure/istio-gateway/namespace.yaml")


if __name__ == "__main__":
    main()
