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
        for environment, components in ANSWERS["_environments"].items():
            target = template.with_name(environment)
            for source in sorted(path for path in template.rglob("*") if path.is_file()):
                text = source.read_text().replace(ANSWERS["_stamp"]["environment"], environment)
                destination = target / source.relative_to(template)
                destination.parent.mkdir(parents=True, exist_ok=True)
                destination.write_text(expand_components(text, components))
        shutil.rmtree(template)


def main() -> None:
    if not ANSWERS["include_database"]:
        remove_database()
    remove_other_gitops_tools()
    stamp_environments()
    if ANSWERS["_gateway_namespace"] == "istio-system":  # the control plane's namespace, made by istio-base/
        remove("infrastructure/istio-gateway/namespace.yaml")


if __name__ == "__main__":
    main()
