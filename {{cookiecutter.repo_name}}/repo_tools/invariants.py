"""The repo's security and routing promises, checked on rendered documents.

Each check takes the documents of one kustomization build and the ingress gateway's identity,
and returns one sentence per violation that names the resource to fix.
"""

from collections.abc import Callable, Iterator

from repo_tools import edge, gateway_api, pod_security, resilience
from repo_tools.layout import IngressGateway
from repo_tools.mesh import Mesh, Unmodelled, Verdict
from repo_tools.resources import (
    WORKLOAD_KINDS,
    describe,
    name_of,
    namespace_of,
    of_kind,
    pod_labels,
    principal,
    selects,
)

Docs = list[dict]
Check = Callable[[Docs, IngressGateway], list[str]]


def app_namespaces(docs: Docs) -> list[str]:
    return [name_of(doc) for doc in of_kind(docs, "Namespace")]


def istio_gateways(docs: Docs) -> list[dict]:
    return [gw for gw in of_kind(docs, "Gateway") if gw["apiVersion"].startswith("networking.istio.io/")]


def kubernetes_gateways(docs: Docs) -> list[dict]:
    return [gw for gw in of_kind(docs, "Gateway") if gw["apiVersion"].startswith(f"{gateway_api.GROUP}/")]


def listeners(docs: Docs) -> Iterator[tuple[dict, dict]]:
    for gw in kubernetes_gateways(docs):
        for listener in gw["spec"].get("listeners", []):
            yield gw, listener


def policy_sources(policy: dict) -> Iterator[tuple[int, dict]]:
    for number, rule in enumerate(policy.get("spec", {}).get("rules") or [], start=1):
        for source in rule.get("from") or []:
            yield number, source.get("source", {})


def namespaces_are_injected(docs: Docs, gateway: IngressGateway) -> list[str]:
    return [
        f"{describe(ns)}: label it istio-injection=enabled (or istio.io/rev) so its pods get a sidecar"
        for ns in of_kind(docs, "Namespace")
        if ns.get("metadata", {}).get("labels", {}).get("istio-injection") != "enabled"
        and "istio.io/rev" not in ns.get("metadata", {}).get("labels", {})
    ]


def mtls_is_strict(docs: Docs, gateway: IngressGateway) -> list[str]:
    peer_auths = list(of_kind(docs, "PeerAuthentication"))
    problems = [
        f"Namespace {namespace}: add a PeerAuthentication without selector and mtls.mode STRICT"
        for namespace in app_namespaces(docs)
        if not any(
            namespace_of(pa) == namespace
            and not pa.get("spec", {}).get("selector")
            and pa.get("spec", {}).get("mtls", {}).get("mode") == "STRICT"
            for pa in peer_auths
        )
    ]
    for pa in peer_auths:
        spec = pa.get("spec", {})
        modes = [spec.get("mtls", {}).get("mode")] + [
            setting.get("mode") for setting in (spec.get("portLevelMtls") or {}).values()
        ]
        weakened = sorted({mode for mode in modes if mode in ("PERMISSIVE", "DISABLE")})
        if weakened:
            problems.append(f"{describe(pa)}: mode {', '.join(weakened)} accepts plaintext; use STRICT")
    return problems


def deny_by_default(docs: Docs, gateway: IngressGateway) -> list[str]:
    def allows_nothing(policy: dict) -> bool:
        spec = policy.get("spec") or {}
        return not spec.get("selector") and not spec.get("rules") and spec.get("action", "ALLOW") == "ALLOW"

    policies = list(of_kind(docs, "AuthorizationPolicy"))
    return [
        f"Namespace {namespace}: add an allow-nothing AuthorizationPolicy (spec: {{}}) so traffic is denied by default"
        for namespace in app_namespaces(docs)
        if not any(namespace_of(policy) == namespace and allows_nothing(policy) for policy in policies)
    ]


def principals_name_real_identities(docs: Docs, gateway: IngressGateway) -> list[str]:
    service_accounts = {principal(namespace_of(sa), name_of(sa)) for sa in of_kind(docs, "ServiceAccount")}
    problems = []
    for policy in of_kind(docs, "AuthorizationPolicy"):
        for rule, source in policy_sources(policy):
            for named in source.get("principals") or []:
                if named.endswith("/sa/default"):
                    problems.append(
                        f"{describe(policy)} rule {rule}: {named} admits every pod that sets no "
                        "serviceAccountName; give the caller its own ServiceAccount"
                    )
                elif "*" in named:
                    problems.append(
                        f"{describe(policy)} rule {rule}: wildcard principal {named} admits unknown callers"
                    )
                elif named not in service_accounts and named != gateway.principal:
                    problems.append(
                        f"{describe(policy)} rule {rule}: {named} is neither a ServiceAccount in this build "
                        f"nor the ingress gateway ({gateway.principal})"
                    )
            if "*" in (source.get("namespaces") or []):
                problems.append(f"{describe(policy)} rule {rule}: namespaces '*' admits every namespace")
    return problems


def workloads_have_own_identity(docs: Docs, gateway: IngressGateway) -> list[str]:
    service_accounts = {(namespace_of(sa), name_of(sa)) for sa in of_kind(docs, "ServiceAccount")}
    problems = []
    for workload in of_kind(docs, *WORKLOAD_KINDS):
        account = workload["spec"]["template"]["spec"].get("serviceAccountName", "default")
        if account == "default":
            problems.append(f"{describe(workload)}: set serviceAccountName to a ServiceAccount of its own")
        elif (namespace_of(workload), account) not in service_accounts:
            problems.append(f"{describe(workload)}: ServiceAccount {account} is not part of this build")
    return problems


def tls_secrets_live_with_the_gateway(docs: Docs, gateway: IngressGateway) -> list[str]:
    certificates = list(of_kind(docs, "Certificate"))
    problems = [
        f"{describe(gw)} listener {listener['name']}: {problem}"
        for gw, listener in listeners(docs)
        if listener.get("protocol") == "HTTPS"
        for problem in [gateway_api.tls_problem(docs, gw, listener)]
        if problem
    ]
    for gw in istio_gateways(docs):
        for server in gw.get("spec", {}).get("servers", []):
            secret = (server.get("tls") or {}).get("credentialName")
            if not secret:
                continue
            if not any(
                namespace_of(cert) == gateway.namespace and cert["spec"].get("secretName") == secret
                for cert in certificates
            ):
                elsewhere = [describe(cert) for cert in certificates if cert["spec"].get("secretName") == secret]
                problems.append(
                    f"{describe(gw)}: credentialName {secret} must be a secret in {gateway.namespace}, the namespace "
                    "the gateway pods run in" + (f" (it is made by {', '.join(elsewhere)})" if elsewhere else "")
                )
    return problems


def certificates_have_issuers(docs: Docs, gateway: IngressGateway) -> list[str]:
    issuers = {(namespace_of(doc), name_of(doc)) for doc in of_kind(docs, "Issuer")}
    cluster_issuers = {name_of(doc) for doc in of_kind(docs, "ClusterIssuer")}
    problems = []
    for cert in of_kind(docs, "Certificate"):
        ref = cert["spec"].get("issuerRef", {})
        if ref.get("kind") == "ClusterIssuer":
            found = ref.get("name") in cluster_issuers
        else:
            found = (namespace_of(cert), ref.get("name")) in issuers
        if not found:
            problems.append(
                f"{describe(cert)}: issuer {ref.get('kind', 'Issuer')} {ref.get('name')} is not in this build"
            )
    return problems


def hosts_are_exact(docs: Docs, gateway: IngressGateway) -> list[str]:
    problems = [
        f"{describe(gw)} listener {listener['name']}: hostname {listener.get('hostname')!r} "
        + ("is a wildcard" if listener.get("hostname") else "is missing, so it serves every host")
        + "; bind the app's own domain"
        for gw, listener in listeners(docs)
        if not listener.get("hostname") or "*" in listener["hostname"]
    ]
    for http_route in of_kind(docs, "HTTPRoute"):
        problems += [
            f"{describe(http_route)}: hostname {host!r} is a wildcard; route the app's own domain"
            for host in http_route["spec"].get("hostnames", [])
            if "*" in host
        ]
    for gw in istio_gateways(docs):
        for server in gw.get("spec", {}).get("servers", []):
            problems += [
                f"{describe(gw)}: host {host!r} is a wildcard; bind the app's own domain"
                for host in server.get("hosts", [])
                if "*" in host
            ]
    for vs in of_kind(docs, "VirtualService"):
        problems += [
            f"{describe(vs)}: host {host!r} is a wildcard; route the app's own domain"
            for host in vs.get("spec", {}).get("hosts", [])
            if "*" in host
        ]
    return problems


def gateways_select_the_installed_gateway(docs: Docs, gateway: IngressGateway) -> list[str]:
    """Every Gateway is served by the gateway apps/base/ingress-gateway.env names, whose identity Istio derives."""
    problems = [
        f"{describe(gw)}: selector {gw.get('spec', {}).get('selector')} does not pick the ingress gateway's pods "
        f"(istio: {gateway.istio_label})"
        for gw in istio_gateways(docs)
        if gateway.gateway_api or gw.get("spec", {}).get("selector") != {"istio": gateway.istio_label}
    ]
    for gw in kubernetes_gateways(docs):
        if (
            gw is not gateway_api.the_gateway(docs, gateway)
            or gw["spec"].get("gatewayClassName") != gateway_api.GATEWAY_CLASS
        ):
            problems.append(
                f"{describe(gw)} (class {gw['spec'].get('gatewayClassName')}): the settings name Gateway "
                f"{gateway.namespace}/{gateway.gateway_name or '(none)'} of class {gateway_api.GATEWAY_CLASS}, "
                "and the policies admit only its identity"
            )
        elif gateway.service_account != gateway_api.deployed_name(gw):
            problems.append(
                f"{describe(gw)}: Istio runs its gateway as ServiceAccount {gateway_api.deployed_name(gw)}, "
                f"but apps/base/ingress-gateway.env says {gateway.service_account}"
            )
    return problems


def listeners_admit_only_the_apps_routes(docs: Docs, gateway: IngressGateway) -> list[str]:
    """Port 443 takes HTTPRoutes from the app's namespace only, port 80 from the gateway's own only."""
    own = set(app_namespaces(docs))
    problems = []
    for gw, listener in listeners(docs):
        allowed = listener.get("allowedRoutes") or {}
        source = (allowed.get("namespaces") or {}).get("from", "Same")
        selector = (allowed.get("namespaces") or {}).get("selector") or {}
        admitted = (
            {namespace_of(gw)}
            if source == "Same"
            else {selector.get("matchLabels", {}).get("kubernetes.io/metadata.name")}
            if source == "Selector" and set(selector) == {"matchLabels"} and len(selector["matchLabels"]) == 1
            else set()
        )
        if not admitted or not admitted <= own | {namespace_of(gw)}:
            problems.append(
                f"{describe(gw)} listener {listener['name']}: allowedRoutes admit routes from {source} "
                f"{selector or ''}; admit only the app's namespace (from: Selector on kubernetes.io/metadata.name) "
                "or the gateway's own (from: Same)"
            )
        if [k.get("kind") for k in allowed.get("kinds") or []] != ["HTTPRoute"]:
            problems.append(f"{describe(gw)} listener {listener['name']}: allowedRoutes.kinds must be [HTTPRoute]")
    return problems


def gateways_serve_https_only(docs: Docs, gateway: IngressGateway) -> list[str]:
    """Every plain-HTTP request, on any path a route names, is redirected to HTTPS."""
    problems = []
    model = Mesh(docs, gateway)
    paths = {"/"} | {
        value
        for vs in of_kind(docs, "VirtualService")
        for route in vs.get("spec", {}).get("http", [])
        for condition in route.get("match") or []
        for value in (condition.get("uri") or {}).values()
    }
    paths |= {
        match.get("path", {}).get("value", "/")
        for http_route in of_kind(docs, "HTTPRoute")
        for rule in http_route["spec"].get("rules", [])
        for match in rule.get("matches") or []
    }
    for gw, listener in listeners(docs):
        if listener.get("protocol") != "HTTP":
            continue
        for path in sorted(paths):
            try:
                verdict = model.from_internet("http", listener.get("hostname") or "", path)
            except Unmodelled as unmodelled:
                verdict = Verdict("unknown", str(unmodelled))
            if verdict.outcome != "redirect https":
                problems.append(
                    f"{describe(gw)} listener {listener['name']}: http://{listener.get('hostname')}{path} is not "
                    f"redirected to HTTPS ({verdict.because}); attach only an HTTPRoute whose one rule is a "
                    "RequestRedirect to scheme https"
                )
                break
    for gw in kubernetes_gateways(docs):
        if not any(
            listener.get("protocol") == "HTTPS" and (listener.get("tls") or {}).get("mode", "Terminate") == "Terminate"
            for listener in gw["spec"].get("listeners", [])
        ):
            problems.append(f"{describe(gw)}: add an HTTPS listener that terminates TLS with a certificateRef")
    for gw in istio_gateways(docs):
        servers = gw.get("spec", {}).get("servers", [])
        for server in servers:
            if server["port"].get("protocol") != "HTTP":
                continue
            for host in server.get("hosts", []):
                for path in sorted(paths):
                    try:
                        verdict = model.from_internet("http", host.split("/")[-1], path)
                    except Unmodelled as unmodelled:
                        verdict = Verdict("unknown", str(unmodelled))
                    if verdict.outcome != "redirect https":
                        problems.append(
                            f"{describe(gw)}: http://{host}{path} is not redirected to HTTPS ({verdict.because}); "
                            "make the first route of its VirtualService a redirect matching only port "
                            f"{server['port'].get('number')}"
                        )
                        break
        if not any(
            server["port"].get("protocol") == "HTTPS" and (server.get("tls") or {}).get("mode") in ("SIMPLE", "MUTUAL")
            for server in servers
        ):
            problems.append(f"{describe(gw)}: add an HTTPS server with tls.mode SIMPLE and a credentialName")
    return problems


def path_prefixes_stop_at_a_segment(docs: Docs, gateway: IngressGateway) -> list[str]:
    problems = []
    for vs in of_kind(docs, "VirtualService"):
        for route in vs.get("spec", {}).get("http", []):
            for match in route.get("match") or []:
                prefix = (match.get("uri") or {}).get("prefix")
                if prefix and not prefix.endswith("/"):
                    problems.append(
                        f"{describe(vs)} route {route.get('name', '?')}: prefix {prefix!r} also matches "
                        f"{prefix + 'ary'!r}; match exact {prefix!r} plus prefix {prefix + '/'!r}"
                    )
    return problems


def gateway_routes_reach_admitting_workloads(docs: Docs, gateway: IngressGateway) -> list[str]:
    """A workload the gateway routes to must admit the gateway's identity, or every request gets 403."""
    services = {f"{name_of(svc)}.{namespace_of(svc)}.svc.cluster.local": svc for svc in of_kind(docs, "Service")}
    policies = list(of_kind(docs, "AuthorizationPolicy"))
    problems = []
    for where, host in gateway_destinations(docs):
        service = services.get(host)
        if service is None:
            problems.append(f"{where}: no Service {host} in this build")
            continue
        selector = service["spec"].get("selector", {})
        admitted = any(
            namespace_of(policy) == namespace_of(service)
            and policy["spec"].get("action", "ALLOW") == "ALLOW"
            and selects(policy["spec"].get("selector", {}).get("matchLabels", {}), selector)
            and policy["spec"].get("selector")
            and any(gateway.principal in (source.get("principals") or []) for _, source in policy_sources(policy))
            for policy in policies
        )
        if not admitted:
            problems.append(
                f"{where}: {describe(service)} has no ALLOW rule for "
                f"the ingress gateway ({gateway.principal}), so routed requests get 403"
            )
    return problems


def gateway_destinations(docs: Docs) -> Iterator[tuple[str, str]]:
    """(route, Service FQDN) for every destination a route of the ingress gateway sends requests to."""
    for rule in resilience.route_rules(docs):
        if rule.at_the_gateway:
            for destination in rule.destinations:
                yield rule.policy.where, destination.fqdn


def workloads_are_hardened(docs: Docs, gateway: IngressGateway) -> list[str]:
    problems = []
    for workload in of_kind(docs, *WORKLOAD_KINDS):
        pod = workload["spec"]["template"]["spec"]
        for container in pod.get("containers", []):
            where = f"{describe(workload)} container {container.get('name')}"
            context = container.get("securityContext", {})
            if not (context.get("runAsNonRoot") or pod.get("securityContext", {}).get("runAsNonRoot")):
                problems.append(f"{where}: set runAsNonRoot")
            if not context.get("readOnlyRootFilesystem"):
                problems.append(f"{where}: set readOnlyRootFilesystem")
            if context.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: set allowPrivilegeEscalation: false")
            resources = container.get("resources", {})
            if not resources.get("requests") or not resources.get("limits"):
                problems.append(f"{where}: set resource requests and limits")
            problems += [
                f"{where}: add a {probe}" for probe in ("readinessProbe", "livenessProbe") if probe not in container
            ]
    return problems


def disruption_budgets_fit_replicas(docs: Docs, gateway: IngressGateway) -> list[str]:
    budgets = list(of_kind(docs, "PodDisruptionBudget"))
    problems = []
    workloads = list(of_kind(docs, "Deployment", "StatefulSet"))

    def covers(pdb: dict, workload: dict) -> bool:
        selector = pdb["spec"].get("selector", {}).get("matchLabels", {})
        return namespace_of(pdb) == namespace_of(workload) and selects(selector, pod_labels(workload))

    for workload in workloads:
        replicas = workload["spec"].get("replicas", 1)
        if replicas > 1 and not any(covers(pdb, workload) for pdb in budgets):
            problems.append(f"{describe(workload)}: {replicas} replicas and no PodDisruptionBudget")
    for pdb in budgets:
        # One budget may cover several workloads (a canary next to its stable version): count all their pods.
        pods = sum(workload["spec"].get("replicas", 1) for workload in workloads if covers(pdb, workload))
        if pods == 1:
            problems.append(f"{describe(pdb)}: a PodDisruptionBudget on a single pod blocks node drains")
    return problems


def service_ports_declare_protocol(docs: Docs, gateway: IngressGateway) -> list[str]:
    return [
        f"{describe(svc)} port {port.get('port')}: name it and set appProtocol so Istio knows its protocol"
        for svc in of_kind(docs, "Service")
        for port in svc["spec"].get("ports", [])
        if not port.get("name") or not port.get("appProtocol")
    ]


def service_ports_reach_container_ports(docs: Docs, gateway: IngressGateway) -> list[str]:
    problems = []
    for svc in of_kind(docs, "Service"):
        selector = svc["spec"].get("selector", {})
        pods = [
            workload["spec"]["template"]["spec"]
            for workload in of_kind(docs, *WORKLOAD_KINDS)
            if namespace_of(workload) == namespace_of(svc) and selector and selects(selector, pod_labels(workload))
        ]
        if not pods:
            problems.append(f"{describe(svc)}: its selector {selector} matches no workload in this build")
        for port in svc["spec"].get("ports", []):
            target = port.get("targetPort", port.get("port"))
            declared = [
                (p.get("name"), p.get("containerPort"))
                for pod in pods
                for container in pod.get("containers", [])
                for p in container.get("ports", [])
            ]
            if pods and not any(target in pair for pair in declared):
                problems.append(f"{describe(svc)} port {port.get('port')}: targetPort {target} is not a container port")
    return problems


def network_policies_fence_the_namespace(docs: Docs, gateway: IngressGateway) -> list[str]:
    """Default-deny in both directions, while the gateway can connect and pods reach DNS and istiod."""
    problems = []
    for namespace in app_namespaces(docs):
        policies = [np["spec"] for np in of_kind(docs, "NetworkPolicy") if namespace_of(np) == namespace]
        if not any(
            p.get("podSelector") == {}
            and set(p.get("policyTypes", [])) == {"Ingress", "Egress"}
            and not p.get("ingress")
            and not p.get("egress")
            for p in policies
        ):
            problems.append(f"Namespace {namespace}: add a default-deny NetworkPolicy for Ingress and Egress")
        sources = [peer for p in policies for rule in p.get("ingress", []) for peer in rule.get("from", [])]
        gateway_namespace = {"kubernetes.io/metadata.name": gateway.namespace}
        if not any(peer.get("namespaceSelector", {}).get("matchLabels") == gateway_namespace for peer in sources):
            problems.append(
                f"Namespace {namespace}: no NetworkPolicy lets the ingress gateway ({gateway.namespace}) connect"
            )
        egress_ports = {
            (port.get("protocol", "TCP"), port.get("port"))
            for p in policies
            for rule in p.get("egress", [])
            for port in rule.get("ports", [])
        }
        for needed, why in (((("UDP", 53)), "DNS"), ((("TCP", 15012)), "istiod")):
            if needed not in egress_ports:
                problems.append(
                    f"Namespace {namespace}: no NetworkPolicy lets pods reach {why} ({needed[0]} {needed[1]})"
                )
    return problems


CHECKS: dict[str, Check] = {
    check.__name__: check
    for check in (
        namespaces_are_injected,
        mtls_is_strict,
        deny_by_default,
        principals_name_real_identities,
        workloads_have_own_identity,
        tls_secrets_live_with_the_gateway,
        certificates_have_issuers,
        hosts_are_exact,
        gateways_select_the_installed_gateway,
        listeners_admit_only_the_apps_routes,
        gateways_serve_https_only,
        path_prefixes_stop_at_a_segment,
        gateway_routes_reach_admitting_workloads,
        workloads_are_hardened,
        disruption_budgets_fit_replicas,
        service_ports_declare_protocol,
        service_ports_reach_container_ports,
        network_policies_fence_the_namespace,
        resilience.retries_never_repeat_a_change,
        resilience.retries_fit_the_timeout,
        resilience.splits_add_up,
        resilience.services_have_circuit_breakers,
        resilience.versions_run_alike,
        edge.envoy_patches_are_envoy_config,
        edge.rate_limits_name_routes_of_the_build,
        edge.routes_to_a_service_are_limited_alike,
        pod_security.the_apps_namespace_is_restricted,
        pod_security.pods_admit_under_their_namespaces_level,
    )
}
# The base is not deployed on its own: each overlay adds the Issuer for its environment.
OVERLAY_ONLY = {"certificates_have_issuers"}


def violations(docs: Docs, gateway: IngressGateway, *, is_overlay: bool = True) -> list[str]:
    return [
        problem
        for name, check in CHECKS.items()
        if is_overlay or name not in OVERLAY_ONLY
        for problem in check(docs, gateway)
    ]
