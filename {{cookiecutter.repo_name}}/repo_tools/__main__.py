"""python -m repo_tools: build every kustomization of the apps layer, validate it, check its promises,
and check that the install (infrastructure/) pins every chart and installs the gateway the policies trust."""

import sys
import time

from repo_tools import REPO_ROOT, charts, gitops, install, invariants, kustomize, layout, rendered_install, schemas


def validate_all() -> list[str]:
    gateway = layout.ingress_gateway()
    problems = []
    for name, directory in layout.app_kustomizations().items():
        started = time.perf_counter()
        try:
            docs = kustomize.build(directory)
        except kustomize.KustomizeError as error:
            problems.append(f"{name}: {error}")
            print(f"FAIL {name:<10} does not build")
            continue
        found = [error for doc in docs for error in schemas.schema_errors(doc)]
        found += invariants.violations(docs, gateway, is_overlay=name != "base")
        found += gitops.acme_http01_challenges_are_served(
            docs, install.plain_resources(), install.chart("istiod").values.get("meshConfig") or {}, gateway
        )
        problems += [f"{name}: {problem}" for problem in found]
        verdict = "FAIL" if found else "ok  "
        print(f"{verdict} {name:<10} {len(docs):>3} documents  {time.perf_counter() - started:.2f}s")
    install_problems = install.chart_problems() + install.gateway_identity_problems(gateway)
    install_problems += gitops.webhook_failure_policy_is_fixed(install.charts())
    print(f"{'FAIL' if install_problems else 'ok  '} {'install':<10} {len(install.charts()):>3} charts")
    problems += [f"install: {problem}" for problem in install_problems]
    return problems + argocd_problems() + rendered_install_problems(gateway)


def argocd_problems() -> list[str]:
    """Argo CD's entry points retry, and its health checks hold each sync wave until the one before is done."""
    if install.gitops_tool() != "argocd":
        return []
    found = gitops.child_applications_wait_for_their_sync(gitops.argocd_settings())
    for environment in layout.overlays():
        directory = REPO_ROOT / "clusters" / "argocd" / environment
        if directory.is_dir():
            docs = kustomize.build(directory) + kustomize.build(directory / "applications")
            found += gitops.automated_applications_retry(docs)
    print(f"{'FAIL' if found else 'ok  '} {'argocd':<10} sync waves, retries and health checks")
    return [f"argocd: {problem}" for problem in found]


def rendered_install_problems(gateway: layout.IngressGateway) -> list[str]:
    """The install layer's rules over what the charts render, where Helm or recorded renders are at hand."""
    reason = charts.unavailable_reason()
    if reason:
        print(f"skip {'rendered':<10} {reason}")
        return []
    problems = []
    for name, overlay in layout.overlays().items():
        infrastructure_overlay = REPO_ROOT / "infrastructure" / "overlays" / name
        started = time.perf_counter()
        docs = charts.render(infrastructure_overlay)
        found = [error for doc in docs for error in schemas.schema_errors(doc)]
        found += rendered_install.the_gateway_is_installed_as_the_apps_layer_expects(docs, gateway)
        found += rendered_install.selectors_select_the_gateway_pods(docs, kustomize.build(overlay), gateway)
        if rendered_install.lists_high_availability(infrastructure_overlay):
            found += rendered_install.high_availability_holds(docs, gateway)
        if install.gitops_tool() == "argocd":
            found += gitops.install_settles_without_metrics_or_load_balancer(gitops.argocd_settings(), docs)
        problems += [f"infrastructure {name}: {problem}" for problem in found]
        verdict = "FAIL" if found else "ok  "
        print(f"{verdict} {'infra ' + name:<10} {len(docs):>3} documents  {time.perf_counter() - started:.2f}s")
    return problems


def main() -> int:
    problems = validate_all()
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
