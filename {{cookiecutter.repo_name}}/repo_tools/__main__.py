"""python -m repo_tools: every rule this repo promises, one line per rule family with what it counted.
python -m repo_tools diff [BASE] [--markdown]: what a change does to each environment (repo_tools/review.py).

The apps layer (build, schemas, invariants, the traffic contract, ACME), the install layer (chart pins, the
gateway's identity, install order), the GitOps entry points (sync order, retries, health checks), and the
install as its charts render, where Helm or recorded renders are at hand. Tests call the same functions.
"""

import argparse
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

from repo_tools import (
    REPO_ROOT,
    RepoFileError,
    charts,
    contract,
    gateway_api,
    gitops,
    injection,
    install,
    invariants,
    kustomize,
    layout,
    pod_security,
    rendered_install,
    renovate,
    review,
    schemas,
)
from repo_tools.schemas import NO_SCHEMA_AT_HAND, schema_errors, without_unavailable_schemas


def run(name: str, check: Callable[[], tuple[str, list[str]]]) -> list[str]:
    """One family of checks: a line saying what it covered and how long it took, then its problems, named."""
    started = time.perf_counter()
    try:
        counted, problems = check()
    except (kustomize.KustomizeError, charts.ChartsUnavailable, RepoFileError, contract.ContractError) as error:
        counted, problems = "could not check", [str(error)]
    except Exception as error:  # noqa: BLE001 - an edited repo must get a finding, never a traceback
        counted, problems = "could not check", [unexpected(error)]
    verdict = "FAIL" if problems else "ok  "
    found = f", {len(problems)} problems" if problems else ""
    print(f"{verdict} {name:<11} {counted}{found}  {time.perf_counter() - started:.2f}s")
    return [f"{name}: {problem}" for problem in problems]


def unexpected(error: Exception) -> str:
    """A check that met what it cannot read: the error and where it was raised, so that the file can be found."""
    frame = traceback.extract_tb(error.__traceback__)[-1]
    where = f"{Path(frame.filename).name}:{frame.lineno} ({frame.name})"
    return (
        f"stopped at {where} with {type(error).__name__}: {error}; a file this check reads is probably missing "
        "a key or a document it expects (git status shows what changed)"
    )


def renovate_coverage() -> tuple[str, list[str]]:
    problems = renovate.config_errors() + renovate.unmatched_pins() + renovate.actions_pinned_by_commit()
    return f"{len(renovate.pins())} pins", problems


def e2e_run_fit(installed: list[dict], apps: list[dict]) -> list[str]:
    """What the e2e run relies on in the rendered install, as the e2e harness itself reads the repo."""
    from e2e.harness import install_plan, settings

    return install_plan.rendered_install_problems(installed, apps, settings.load("check", apps))


def validate_all() -> list[str]:
    gateway = layout.ingress_gateway()
    built: dict[str, list[dict]] = {}
    problems = []
    # Reads files only: it runs while kustomize builds, and reports in its turn.
    background = ThreadPoolExecutor(max_workers=1)
    renovate_checked = background.submit(renovate_coverage)
    directories = layout.app_kustomizations()
    kustomize.start([*directories.values(), *entry_point_kustomizations()])

    def build() -> tuple[str, list[str]]:
        found = []
        results = {name: build_or_error(directory) for name, directory in directories.items()}
        for name, result in results.items():
            if isinstance(result, str):
                found.append(f"{name}: {result}")
            else:
                built[name] = result
        return f"{len(built)} kustomizations of the apps layer", found

    def schemas() -> tuple[str, list[str]]:
        found = [f"{name}: {error}" for name, docs in built.items() for doc in docs for error in schema_errors(doc)]
        found, unchecked = without_unavailable_schemas(found)
        if unchecked:
            reason = unchecked[0].split(NO_SCHEMA_AT_HAND, 1)[1]
            print(f"skip {'schemas':<11} {len(unchecked)} documents unchecked: {reason}")
        return f"{sum(map(len, built.values())) - len(unchecked)} documents", found

    def promises() -> tuple[str, list[str]]:
        found = [
            f"{name}: {problem}"
            for name, docs in built.items()
            for problem in invariants.violations(docs, gateway, is_overlay=name != "base")
        ]
        return f"{len(invariants.CHECKS)} rules x {len(built)} kustomizations", found

    def traffic_contract() -> tuple[str, list[str]]:
        try:
            rows = contract.load()
        except contract.ContractError as error:
            return "contract.yaml", [
                line if line.startswith("contract.yaml") else f"contract.yaml: {line}"
                for line in str(error).splitlines()
            ]
        overlays = {name: path for name, path in layout.overlays().items() if name in built}
        outcomes = [
            outcome
            for name, path in overlays.items()
            for outcome in contract.check(
                name, built[name], rows, gateway, layout.public_host(path), layout.api_tokens(path)
            )
        ]
        return f"{len(rows)} rows x {len(overlays)} overlays", [o.line() for o in outcomes if not o.holds]

    def certificates() -> tuple[str, list[str]]:
        resources, mesh_config = install.plain_resources(), install.chart("istiod").values.get("meshConfig") or {}
        found = [
            f"{name}: {problem}"
            for name in layout.overlays()
            if name in built
            for problem in gitops.acme_http01_challenges_are_served(built[name], resources, mesh_config, gateway)
        ]
        return f"ACME HTTP-01 over {len(layout.overlays())} overlays", found

    def install_layer() -> tuple[str, list[str]]:
        found = install.chart_problems() + install.gateway_identity_problems(gateway) + install.addon_problems()
        found += install.mesh_config_problems()
        found += install.webhook_failure_policy_is_fixed(install.charts())
        found += gitops.install_order_problems(sorted(layout.overlays()))
        return f"{len(install.charts())} charts", found

    problems += run("build", build)
    problems += run("schemas", schemas)
    problems += run("invariants", promises)
    problems += run("contract", traffic_contract)
    problems += run("acme", certificates)
    problems += run("install", install_layer)
    argocd_settings = cache(gitops.argocd_settings)  # read by the GitOps checks and the rendered install's
    problems += run("gitops", lambda: gitops_entry_points(gateway, built, argocd_settings))
    problems += run("renovate", renovate_checked.result)
    background.shutdown()
    return problems + rendered_install_problems(gateway, built, argocd_settings)


def build_or_error(directory) -> list[dict] | str:
    try:
        return kustomize.build(directory)
    except kustomize.KustomizeError as error:
        return str(error)


def entry_point_kustomizations() -> list[Path]:
    """What the Argo CD checks build: each environment's entry point and Argo CD's settings (Flux builds none)."""
    if install.gitops_tool() != "argocd":
        return []
    entry_points = [REPO_ROOT / "clusters" / "argocd" / name for name in gitops.environments("argocd")]
    return [*(k for path in entry_points for k in gitops.entry_point_kustomizations(path)), gitops.ARGOCD_SETTINGS]


def gitops_entry_points(
    gateway: layout.IngressGateway, apps: dict[str, list[dict]], argocd_settings: Callable[[], dict[str, str]]
) -> tuple[str, list[str]]:
    """Each environment's entry points validate, point at real paths and sync in order; Argo CD's health checks."""
    tool = install.gitops_tool()
    environments = gitops.environments(tool)
    found = []
    for environment in environments:
        if tool == "argocd":
            docs = gitops.argocd_entry_points(environment)
            found += gitops.argocd_order_problems(docs, environment)
        else:
            docs = gitops.entry_point_documents(REPO_ROOT / "clusters" / "flux" / environment)
            found += gitops.flux_order_problems(docs, environment)
            found += gitops.flux_components_problems(docs, environment)
            installed = gitops.flux_install(gitops.flux_listed_components(docs))
            found += [f"{environment}: {error}" for doc in installed for error in schema_errors(doc)]
            found += [f"{environment}: {problem}" for problem in install.helm_release_problems(installed, gateway)]
        found += [f"{environment}: {error}" for doc in docs for error in schema_errors(doc)]
    if tool == "argocd":
        settings = argocd_settings()
        found += gitops.child_applications_wait_for_their_sync(settings)
        found += [
            f"{name}: {problem}"
            for name in environments
            for problem in gitops.install_settles_without_metrics_or_load_balancer(settings, apps.get(name, []))
        ]
    else:
        found += gitops.flux_twins_problems(gateway)
    return f"{tool}, {len(environments)} environments", found


def rendered_install_problems(
    gateway: layout.IngressGateway, apps: dict[str, list[dict]], argocd_settings: Callable[[], dict[str, str]]
) -> list[str]:
    """The install layer's rules over what the charts render, where Helm or recorded renders are at hand."""
    reason = charts.unavailable_reason()
    if reason:
        print(f"skip {'rendered':<11} {reason}")
        return []
    settings = argocd_settings() if install.gitops_tool() == "argocd" else None
    problems = []
    for name in layout.overlays():
        infrastructure_overlay = REPO_ROOT / "infrastructure" / "overlays" / name

        def check(name=name, infrastructure_overlay=infrastructure_overlay) -> tuple[str, list[str]]:
            docs = charts.render(infrastructure_overlay)
            found = [error for doc in docs for error in schema_errors(doc)]

            if settings is not None:
                found += gitops.install_settles_without_metrics_or_load_balancer(settings, docs)
            try:  # what Istio deploys for a Gateway of the apps layer (managed by istiod, not by the GitOps agent)
                docs = docs + gateway_api.deployed_gateway(apps.get(name, []), gateway)
            except ValueError as refused:
                found.append(str(refused))
            found += rendered_install.the_gateway_is_installed_as_the_apps_layer_expects(docs, gateway)
            found += rendered_install.selectors_select_the_gateway_pods(docs, apps.get(name, []), gateway)
            found += rendered_install.policies_name_ports_the_gateway_listens_on(docs, apps.get(name, []), gateway)
            found += pod_security.install_namespace_problems(docs)
            found += injection.template_problems(docs)
            if gitops.HIGH_AVAILABILITY in gitops.environment_components(name):
                found += rendered_install.high_availability_holds(docs, gateway)
            if name == "e2e" and name in apps:
                found += e2e_run_fit(docs, apps[name])
            return f"{len(docs)} documents of infrastructure/overlays/{name}", found

        problems += run("rendered", check)
    recordings = charts.recordings()
    if recordings is not None:  # the charts' default values and schemas are recorded beside the renders
        problems += run(
            "values",
            lambda: (
                f"{len(install.charts())} values files against their charts",
                [
                    problem
                    for chart in install.charts()
                    for problem in rendered_install.values_keys_exist(chart, recordings)
                ],
            ),
        )
    return problems


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["diff"]:
        return review.main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m repo_tools",
        usage="python -m repo_tools [-h] | python -m repo_tools diff [-h] [BASE] [--markdown]",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(argv)  # no options: --help answers, anything else is refused with the usage (exit 2)
    schemas.use_disk_cache()
    try:
        problems = validate_all()
    except (RepoFileError, kustomize.KustomizeError) as error:
        problems = [str(error)]
    except Exception as error:  # noqa: BLE001 - an edited repo must get a finding, never a traceback
        problems = [unexpected(error)]
    schemas.save_disk_cache()
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
