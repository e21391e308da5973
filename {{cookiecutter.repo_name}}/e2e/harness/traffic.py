"""Traffic policy rows -> what the e2e run expects to see: which pods answer, in what shares, after how long, and
how often a failing backend still gets through. Every expectation comes from the offline verdict for the e2e
overlay (repo_tools.resilience), so the run checks Envoy against the model, not against a second guess."""

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

from e2e.harness.settings import (
    E2E_OVERLAY,
    FAULT_IMAGE,
    HARNESS_LABEL,
    PROXY_CPU_ANNOTATION,
    RESTRICTED_CONTAINER,
    Settings,
    e2e_build,
)
from repo_tools import contract, edge, layout, resilience
from repo_tools.contract import Row
from repo_tools.mesh import Mesh, Verdict
from repo_tools.resources import describe, name_of, namespace_of, of_kind, pod_labels, selects

FAULT_LABEL = "e2e.fault"  # selects one fault Deployment's pods, which also carry the replaced workload's labels
# Above the longest route timeout a repo may set (cookiecutter.json: api_timeout_seconds up to 300).
MAX_DELAY = "10m"
# Envoy retries a try that ran into its per-try timeout only under these conditions (router.cc
# onPerTryTimeoutCommon -> RetryStateImpl::wouldRetryFromReset); under any other the request ends with 504 there.
RETRIED_ON_503 = frozenset({"503", "5xx", "gateway-error"})
# Requests answered this close to the end of an ejection may already meet the pod again: Envoy stamps the ejection
# when the 5xx that ejects the pod passes through, a moment before the client has the answer.
EJECTION_MARGIN = 2.0
# <Deployment>-<pod-template-hash>-<suffix>, or <StatefulSet>-<ordinal>.
POD_OF_WORKLOAD = r"{workload}-(?:[a-z0-9]+-[a-z0-9]{{5}}|\d+)"


@cache
def e2e_mesh() -> tuple[Mesh, str, layout.ApiTokens]:
    mesh = Mesh(e2e_build(), layout.ingress_gateway())
    return mesh, layout.public_host(E2E_OVERLAY), layout.api_tokens(E2E_OVERLAY)


def offline_verdict(row: Row) -> Verdict:
    """What the offline model says the e2e overlay does with the row's request (and the token it sends)."""
    mesh, host, tokens = e2e_mesh()
    return contract.evaluate(row, mesh, host, tokens)


ROUTE_IN_VERDICT = re.compile(r"(?:HTTPRoute \S+ rule|VirtualService \S+ route) (\S+) ")


def rate_limit_of(row: Row) -> edge.Limit | None:
    """The local rate limit of the gateway route the row's request takes in the e2e overlay, if it has one."""
    route = ROUTE_IN_VERDICT.search(offline_verdict(row).because)
    return edge.rate_limits(e2e_build(), layout.ingress_gateway()).get(route.group(1)) if route else None


def refill_seconds(limit: edge.Limit, remaining: int | None, needed: int) -> float:
    """How long until a route's bucket holds `needed` tokens, from `remaining` (None: unknown, so empty). Envoy
    refills it continuously at limit.value per limit.window, up to limit.value."""
    if needed > limit.value:
        raise ValueError(f"{needed} requests never fit in {limit.describe('requests')}: send at most {limit.value}")
    per_second = limit.value / resilience.seconds(limit.window)
    return max(0, needed - (remaining or 0)) / per_second


def rows_with(rows: list[Row], field: str) -> list[Row]:
    """The rows whose traffic expectation sets `field` (version, split, timeout, retries, circuit_breaking)."""
    return [row for row in rows if row.traffic is not None and getattr(row.traffic, field) is not None]


def version_workloads(row: Row, verdict: Verdict | None) -> tuple[str, ...]:
    """The workloads that may answer a row pinned to a version, from the verdict's shares; () for other rows."""
    version = row.traffic.version if row.traffic else None
    if version is None:
        return ()
    if verdict is None:
        raise ValueError(f"{row.name!r} expects version {version}: pass the offline verdict to judge it")
    shares = verdict.traffic.shares if verdict.traffic else ()
    workloads = tuple(share.workload for share in shares if share.version == version and share.weight > 0)
    if not workloads:
        raise ValueError(
            f"{row.name!r} expects version {version}, but in the {E2E_OVERLAY.name} overlay no share of its route goes "
            f"to that version ({verdict.outcome}: {verdict.because})"
        )
    return workloads


def belongs_to(pod: str, workload: str) -> bool:
    """Is `pod` one of the workload's own pods? A prefix is not enough: backend-canary-... starts with backend-."""
    return re.fullmatch(POD_OF_WORKLOAD.format(workload=re.escape(workload)), pod) is not None


def workload_of(pod: str, workloads: Iterable[str]) -> str | None:
    return next((workload for workload in workloads if belongs_to(pod, workload)), None)


def binomial_problem(what: str, observed: int, n: int, share: float, sigmas: float) -> str:
    """ "" when `observed` of `n` lies within `sigmas` standard deviations of a binomial(n, share), else why not."""
    expected = n * share
    bound = sigmas * math.sqrt(n * share * (1 - share))
    if abs(observed - expected) <= bound:
        return ""
    return (
        f"{what}: {observed} of {n}, expected {expected:.1f} ± {bound:.1f} "
        f"({sigmas:g} standard deviations of a binomial with p = {share:.3f})"
    )


def split_within_bound(counts: dict[str, int], weights: dict[str, int], n: int, sigmas: float) -> list[str]:
    """Problems with an observed split: each workload's count must lie within `sigmas` binomial standard
    deviations of its weight's share of n, and nothing else may have answered."""
    total = sum(weights.values())
    problems = [
        problem
        for workload, weight in weights.items()
        if (
            problem := binomial_problem(
                f"{workload} (weight {weight})", counts.get(workload, 0), n, weight / total, sigmas
            )
        )
    ]
    problems += [
        f"{who}: {count} of {n}, not a workload of the split" for who, count in counts.items() if who not in weights
    ]
    return problems


def success_probability(policy: resilience.RoutePolicy, failure_rate: float) -> float:
    """The chance that a request gets 200 from a backend answering 503 at `failure_rate`, each try on its own."""
    tries = policy.retries.attempts + 1 if policy.retries.on & RETRIED_ON_503 else 1
    return 1 - failure_rate**tries


def log_lines_for(request_ids: Iterable[str], text: str) -> list[str]:
    """The access-log lines that carry one of the request ids (in x-request-id or in the tagged path)."""
    ids = tuple(request_ids)
    return [line for line in text.splitlines() if any(request_id in line for request_id in ids)]


def served_request_id(body: str) -> str:
    """The x-request-id the backend saw, from the echo server's answer: the gateway gives each request from the
    internet an id of its own, and its JSON access log carries that one (not the client's, nor the query tag)."""
    return next(
        (line.split(":", 1)[1].strip() for line in body.splitlines() if line.lower().startswith("x-request-id:")), ""
    )


def tagged(path: str, request_id: str) -> str:
    """The path with the request id in its query: access logs print the path, whatever becomes of x-request-id."""
    return f"{path}{'&' if '?' in path else '?'}e2e-request={request_id}"


def fault_prefix(path: str) -> str:
    """Where a fault backend serves its routes for a row's path: go-httpbin's PREFIX, no trailing slash."""
    return path.split("?", 1)[0].rstrip("/")


def fault_name(workload: str) -> str:
    return f"e2e-fault-{workload}"


def fault_deployment(live: dict, prefix: str, settings: Settings, replicas: int) -> dict:
    """go-httpbin in place of a live Deployment: pods with the same labels (so the same Services, DestinationRules
    and AuthorizationPolicies apply), the same ServiceAccount and named port, serving its routes below `prefix`."""
    name = fault_name(live["metadata"]["name"])
    template = live["spec"]["template"]
    port = template["spec"]["containers"][0]["ports"][0]
    labels = template["metadata"]["labels"] | {
        HARNESS_LABEL: "true",
        FAULT_LABEL: name,
        "sidecar.istio.io/inject": "true",
    }
    container = {
        "name": "httpbin",
        "image": FAULT_IMAGE,
        "env": [
            {"name": "PORT", "value": str(port["containerPort"])},
            {"name": "PREFIX", "value": prefix},
            {"name": "MAX_DURATION", "value": MAX_DELAY},
        ],
        "ports": [{"name": port["name"], "containerPort": port["containerPort"]}],
        "readinessProbe": {"httpGet": {"path": f"{prefix}/status/200", "port": port["name"]}, "periodSeconds": 2},
        "securityContext": {**RESTRICTED_CONTAINER, "readOnlyRootFilesystem": True},
    }
    pod_spec = {"serviceAccountName": template["spec"].get("serviceAccountName", "default"), "containers": [container]}
    if "securityContext" in template["spec"]:  # e.g. the sysctl that lets a non-root process bind a low port
        pod_spec["securityContext"] = template["spec"]["securityContext"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": live["metadata"]["namespace"]},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {FAULT_LABEL: name}},
            "template": {
                "metadata": {"labels": labels, "annotations": {PROXY_CPU_ANNOTATION: settings.proxy_cpu}},
                "spec": pod_spec,
            },
        },
    }


@dataclass(frozen=True)
class OutlierDetection:
    consecutive_errors: int  # answers 503 in a row that eject a pod
    base_ejection_seconds: float  # how long the first ejection lasts at least
    max_ejection_percent: int


def outlier_detection(policy: dict) -> OutlierDetection | None:
    """What a DestinationRule traffic policy's outlierDetection does to a pod that answers 503, with the defaults
    Istio and Envoy give the fields it leaves out; None when nothing ejects such a pod."""
    stanza = policy.get("outlierDetection")
    if stanza is None:
        return None
    # A 503 is both a 5xx and a gateway error. Envoy enforces the 5xx count unless Istio is told 0, the gateway-error
    # count only when it is set (pilot cluster_traffic_policy.go applyOutlierDetection).
    counts = (int(stanza.get("consecutive5xxErrors", 5)), int(stanza.get("consecutiveGatewayErrors", 0)))
    thresholds = [count for count in counts if count > 0]
    if not thresholds:
        return None
    return OutlierDetection(
        min(thresholds),
        resilience.seconds(stanza.get("baseEjectionTime", "30s")),
        int(stanza.get("maxEjectionPercent", 10)),
    )


def outlier_detection_towards(docs: list[dict], workload: str) -> tuple[OutlierDetection | None, str]:
    """The outlier detection of the one Service in front of a workload of the build, and where it is set."""
    deployment = next((doc for doc in of_kind(docs, "Deployment", "StatefulSet") if name_of(doc) == workload), None)
    if deployment is None:
        raise ValueError(f"no workload {workload!r} in the build")
    services = [
        service
        for service in of_kind(docs, "Service")
        if namespace_of(service) == namespace_of(deployment)
        and service["spec"].get("selector")
        and selects(service["spec"]["selector"], pod_labels(deployment))
    ]
    if len(services) != 1:
        names = ", ".join(map(describe, services)) or "none"
        raise ValueError(f"{workload!r} should be behind exactly one Service, not: {names}")
    rule = resilience.destination_rule(docs, name_of(services[0]), namespace_of(services[0]))
    if rule is None:
        return None, f"no DestinationRule for {describe(services[0])}"
    return outlier_detection(rule["spec"].get("trafficPolicy") or {}), describe(rule)


def ejectable(healthy_pods: int, max_ejection_percent: int) -> bool:
    """Can Envoy eject one failing pod beside `healthy_pods`? Only while (ejected + 1) / pods stays within
    maxEjectionPercent (ejectHost, source/common/upstream/outlier_detection_impl.cc)."""
    return 100 / (healthy_pods + 1) <= max_ejection_percent


def retried_on_503(policy: resilience.RoutePolicy) -> bool:
    return bool(policy.retries.attempts and policy.retries.on & RETRIED_ON_503)


def failure_share_while_in(shares: tuple[resilience.Share, ...], workload: str, healthy_pods: int) -> float:
    """The share of a route's requests that one failing pod beside `healthy_pods` of `workload` answers until it
    is ejected: the workload's weight, shared evenly by its pods (sequential requests leave the gateway's
    least-request balancing a fair pick between idle pods)."""
    own = sum(share.weight for share in shares if share.workload == workload)
    return own / sum(share.weight for share in shares) / (healthy_pods + 1)


def requests_to_tell(failure_share: float, chance: float) -> int:
    """How many requests must all succeed before luck explains it with at most `chance`: were the failing pod
    never ejected, n of them would all succeed with probability (1 - failure_share) ** n."""
    if failure_share >= 1:
        return 1
    return math.ceil(math.log(chance) / math.log(1 - failure_share))


def ejection_problems(
    before: list[int | None],
    after: list[tuple[int | None, float]],
    detection: OutlierDetection,
    failure_share: float,
    required: int,
) -> list[str]:
    """What went wrong around the ejection of a pod that answers every request 503 while its neighbours answer 200.
    `before`: the statuses until the failing pod had answered `consecutive_errors` times (without them, "all
    succeed afterwards" proves nothing); `after`: (status, seconds since that last 503) of the requests sent next,
    each of which must succeed while the ejection lasts, at least `required` of them."""
    problems = []
    failed_before = before.count(503)
    if failed_before < detection.consecutive_errors:
        problems.append(
            f"before the ejection: {failed_before} answers 503 in {len(before)} requests, fewer than the "
            f"{detection.consecutive_errors} in a row that eject a pod; the failing pod should answer about "
            f"{failure_share:.0%} of them"
        )
    strays = Counter(str(status) for status in before if status not in (200, 503))
    if strays:
        problems.append(f"before the ejection: answers neither kind of pod gives: {dict(strays)}")
    window = detection.base_ejection_seconds - EJECTION_MARGIN
    inside = [status for status, seconds in after if seconds <= window]
    if len(inside) < required:
        problems.append(
            f"after the ejection: {len(inside)} of {len(after)} requests answered within {window:g}s of it "
            f"(baseEjectionTime {detection.base_ejection_seconds:g}s less {EJECTION_MARGIN:g}s), {required} needed"
        )
    failed = Counter(str(status) for status in inside if status != 200)
    if failed:
        problems.append(
            f"after the ejection: {failed.total()} of {len(inside)} requests failed ({dict(failed)}); with the "
            f"failing pod ejected every one reaches a pod answering 200, without ejection about "
            f"{failure_share:.0%} fail"
        )
    return problems
