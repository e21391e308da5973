"""Drop what the answers turned off. Runs offline and can run twice without harm."""

import json
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


def remove_other_gitops_tools() -> None:
    for tool in GITOPS_TOOLS:
        if tool != ANSWERS["gitops_tool"]:
            remove(f"clusters/{tool}", *TOOL_ONLY_FILES.get(tool, ()))


def main() -> None:
    if not ANSWERS["include_database"]:
        remove_database()
    remove_other_gitops_tools()
    if ANSWERS["_gateway_namespace"] == "istio-system":  # the control plane's namespace, made by istio-base/
        remove("infrastructure/istio-gateway/namespace.yaml")


if __name__ == "__main__":
    main()
