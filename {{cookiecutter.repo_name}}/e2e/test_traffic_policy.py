"""The API's traffic policy over real traffic: per traffic row of contract.yaml, a weighted split shares the
requests by weight, a pinned version serves every request, a backend slower than the route meets its timeout, and a
failing one is retried as the route says; for the rows' circuit breaking, a pod that keeps failing is ejected. What
to expect comes from the offline verdict for the e2e overlay; a failure shows the access-log lines of the requests
the test sent (each carries its own id)."""

import json
import math
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace

import pytest
import requests
import yaml

from e2e.harness import bringup, commands, scenarios, tls, traffic
from e2e.harness.retry import Check, eventually
from repo_tools import contract, resilience
from repo_tools.contract import Row

INTERNET_ROWS = [row for row in contract.load() if row.caller == "internet"]
# How far a binomial count may stray from its mean. By the exact binomial tails, a correct repo fails about 1 run
# in 100,000 per count for the split (p = 0.75) and the POST control (p = 0.7), but about 1 in 8,000 for 200 retried
# GETs (p = 0.973, where the normal approximation behind this bound is poor).
SIGMAS = 4.5
SPLIT_REQUESTS = 200
VERSION_REQUESTS = 20
# Each waits the whole timeout; fewer than the five failures in a row that eject a pod (outlierDetection).
TIMEOUT_REQUESTS = 2
TIMEOUT_MARGIN = 3.0  # seconds: TLS, the node port and scheduling on a busy 2-vCPU runner
FAILURE_RATE = 0.3
RETRIED_REQUESTS = 200
CONTROL_REQUESTS = 100
# A pod that answers 503 five times in a row is ejected for 30s; with two pods per version and maxEjectionPercent
# 50 one always stays in, so an ejection moves requests to the other pod instead of failing them.
FAULT_REPLICAS = 2
LOG_FLUSH_SECONDS = 2.0  # Envoy flushes access logs to stdout once a second
EJECTED_VERSION = "stable"
# Expected near 13 for the e2e overlay (the failing pod answers 3/8 of them); 100 leave it no way to hide.
BEFORE_EJECTION_LIMIT = 100
# Envoy ejects on the main thread a moment after the fifth 503 passes through on a worker.
EJECTION_SETTLE_SECONDS = 1.0
LUCK = 1e-6  # the chance that every request after the ejection succeeds though nothing ejected the failing pod
# At a fraction of a second each on a busy runner, well inside the 30s an ejection lasts at least.
AFTER_EJECTION_LIMIT = 60
GATEWAY_API_RETRIES = (
    "the Gateway API's standard channel has no retry field; Istio's default retries only requests that never "
    "reached the backend"
)


@dataclass(frozen=True)
class Sent:
    request_id: str
    status: int | None  # None: no answer, `detail` says why
    body: str
    seconds: float
    detail: str = ""

    @property
    def pod(self) -> str:
        served_by = scenarios.SERVED_BY.search(self.body) if self.status == 200 else None
        return served_by.group(1) if served_by else ""

    def line(self) -> str:
        return f"{self.request_id}: status {self.status} after {self.seconds:.1f}s {self.pod or self.detail}".rstrip()


def row_id(row: Row) -> str:
    return row.name


def send(harness, ca_file: str, row: Row, path: str = "", method: str = "", timeout: float = 10.0) -> Sent:
    """The row's request (or another path or method on the same route), with an id of its own."""
    request_id = str(uuid.uuid4())
    s = harness.settings
    port = s.https_node_port if row.request.scheme == "https" else s.http_node_port
    # The row's token, minted for this request (a traffic row on the API sends a valid one).
    headers = (*row.request.headers, *harness.token_headers(row.request.token), ("x-request-id", request_id))
    target = traffic.tagged(path or row.request.path, request_id)
    started = time.monotonic()
    try:
        response = tls.send(
            method or row.request.method,
            row.request.scheme,
            "127.0.0.1",
            port,
            s.host,
            target,
            ca_file,
            headers,
            timeout,
        )
    except requests.RequestException as error:
        return Sent(request_id, None, "", time.monotonic() - started, f"{type(error).__name__}: {error}")
    return Sent(request_id, response.status_code, response.text, time.monotonic() - started)


def access_log(harness, namespace: str, selector: str, sent: list[Sent]) -> list[str]:
    """The istio-proxy access-log lines of the selected pods that belong to the sent requests."""
    time.sleep(LOG_FLUSH_SECONDS)
    output = harness.proxy_logs(namespace, selector)
    return traffic.log_lines_for([request.request_id for request in sent], output)


def gateway_log(harness, sent: list[Sent]) -> list[str]:
    """The gateway's lines for the sent requests that reached a backend (by the id the gateway gave them)."""
    gateway = harness.settings.gateway
    served = [replace(request, request_id=traffic.served_request_id(request.body)) for request in sent]
    return access_log(
        harness, gateway.namespace, gateway.selector, [request for request in served if request.request_id]
    )


def shown(lines: list[str], title: str, limit: int = 30) -> str:
    more = f", the last {limit}" if len(lines) > limit else ""
    return f"\n{title}: {len(lines)} lines{more}\n" + "\n".join(lines[-limit:])


def offline_traffic(row: Row) -> resilience.Traffic:
    verdict = traffic.offline_verdict(row)
    assert verdict.traffic is not None, f"offline, {row.name!r} has no traffic policy in e2e: {verdict.because}"
    return verdict.traffic


def offline_policy(row: Row) -> resilience.RoutePolicy:
    policy = offline_traffic(row).policy
    assert policy is not None, f"offline, {row.name!r} takes no route of the gateway in e2e"
    return policy


def same_route(row: Row, path: str, method: str = "") -> Row:
    """The row with the test's path (and method), checked offline to reach the same workloads as the row."""
    probe_row = replace(row, request=replace(row.request, path=path, method=method or row.request.method))
    wanted, got = traffic.offline_verdict(row), traffic.offline_verdict(probe_row)
    shares = [verdict.traffic.shares if verdict.traffic else () for verdict in (wanted, got)]
    assert (got.outcome, shares[1]) == (wanted.outcome, shares[0]), (
        f"offline, {probe_row.request.method} {path} does not go where {row.name!r} goes: {got.because}"
    )
    return probe_row


def warm_up(harness, ca_file: str, row: Row) -> None:
    """The row holds as the contract test checks it, so that what follows measures the policy, not a late push."""
    probe = scenarios.probe_for(row, harness.settings, {}, traffic.offline_verdict(row))
    harness.eventually_holds(lambda: bringup.probe_once(harness, probe, ca_file))


def only_fault_pods_answer(harness, ca_file: str, row: Row, prefix: str) -> Check:
    answer = send(harness, ca_file, row, f"{prefix}/status/418")
    return Check(answer.status == 418, f"{answer.line()} (the replaced pods answer 200, go-httpbin 418)")


@contextmanager
def faults_in_place_of(harness, ca_file: str, row: Row, prefix: str, replicas: int) -> Iterator[None]:
    """go-httpbin instead of every workload the row's route shares its requests with, for the duration."""
    namespace = harness.settings.app_namespace
    workloads = sorted({share.workload for share in offline_traffic(row).shares})
    with harness.gitops_paused():
        live = {
            workload: json.loads(harness.kubectl("-n", namespace, "get", "deployment", workload, "-o", "json"))
            for workload in workloads
        }
        faults = [
            traffic.fault_deployment(live[workload], prefix, harness.settings, replicas) for workload in workloads
        ]
        try:
            harness.apply(yaml.safe_dump_all(faults))
            for workload in workloads:
                commands.run_checked(commands.rollout_status(harness.tools, namespace, traffic.fault_name(workload)))
                harness.kubectl("-n", namespace, "scale", f"deployment/{workload}", "--replicas=0")
            for workload in workloads:
                own = ",".join(
                    f"{key}={value}" for key, value in live[workload]["spec"]["selector"]["matchLabels"].items()
                )
                selector = f"{own},!{traffic.FAULT_LABEL}"

                def gone(selector: str = selector) -> Check:
                    left = harness.kubectl("-n", namespace, "get", "pods", "-l", selector, "-o", "name").split()
                    return Check(not left, f"still running: {', '.join(left)}")

                eventually(gone, timeout=120, interval=2 * harness.row_interval, consecutive=1)
            # The gateway hears of the removed endpoints a moment later.
            eventually(
                lambda: only_fault_pods_answer(harness, ca_file, row, prefix),
                timeout=60,
                interval=harness.row_interval,
                consecutive=10,
            )
            yield
        finally:
            fault_names = [traffic.fault_name(workload) for workload in workloads]
            harness.kubectl("-n", namespace, "delete", "deployment", *fault_names, "--ignore-not-found", "--wait")
            for workload in workloads:
                replicas_before = str(live[workload]["spec"].get("replicas", 1))
                harness.kubectl("-n", namespace, "scale", f"deployment/{workload}", f"--replicas={replicas_before}")
                commands.run_checked(commands.rollout_status(harness.tools, namespace, workload))


@pytest.mark.parametrize("row", traffic.rows_with(INTERNET_ROWS, "split"), ids=row_id)
def test_a_weighted_split_shares_the_requests_by_weight(row, harness, ca_file):
    weights = {share.workload: share.weight for share in offline_traffic(row).shares}
    warm_up(harness, ca_file, row)
    harness.make_room_in_the_rate_limit(ca_file, row, SPLIT_REQUESTS)
    sent = [send(harness, ca_file, row) for _ in range(SPLIT_REQUESTS)]
    counts = Counter(
        traffic.workload_of(request.pod, weights) or f"other ({request.pod or f'status {request.status}'})"
        for request in sent
    )
    problems = traffic.split_within_bound(dict(counts), weights, SPLIT_REQUESTS, SIGMAS)
    assert not problems, (
        f"{SPLIT_REQUESTS} requests to {row.request.path}, each workload within {SIGMAS:g} binomial standard "
        f"deviations of its weight: {'; '.join(problems)}\ncounts: {dict(counts)}\n"
        f"pods: {dict(Counter(request.pod for request in sent))}" + shown(gateway_log(harness, sent), "gateway")
    )


@pytest.mark.parametrize("row", traffic.rows_with(INTERNET_ROWS, "version"), ids=row_id)
def test_a_pinned_version_serves_every_request(row, harness, ca_file):
    workloads = traffic.version_workloads(row, traffic.offline_verdict(row))
    warm_up(harness, ca_file, row)
    harness.make_room_in_the_rate_limit(ca_file, row, VERSION_REQUESTS)
    sent = [send(harness, ca_file, row) for _ in range(VERSION_REQUESTS)]
    strays = [request for request in sent if request.status != 200 or not traffic.workload_of(request.pod, workloads)]
    assert not strays, (
        f"{len(strays)} of {VERSION_REQUESTS} requests to {row.request.path} with {dict(row.request.headers)} were "
        f"not answered by a pod of {' or '.join(workloads)}:\n"
        + "\n".join(request.line() for request in strays)
        + shown(gateway_log(harness, strays), "gateway")
    )


@pytest.mark.parametrize("row", traffic.rows_with(INTERNET_ROWS, "timeout"), ids=row_id)
def test_a_backend_slower_than_the_route_gets_504_in_time(row, harness, ca_file):
    policy = offline_policy(row)
    gives_up = resilience.gives_up_after(policy)
    assert gives_up < math.inf, f"offline, {policy.where} never times out ({policy.describe()})"
    prefix = traffic.fault_prefix(row.request.path)
    path = f"{prefix}/delay/{gives_up + 2 * TIMEOUT_MARGIN:g}"
    same_route(row, path)
    warm_up(harness, ca_file, row)
    with faults_in_place_of(harness, ca_file, row, prefix, replicas=1), ThreadPoolExecutor(TIMEOUT_REQUESTS) as pool:
        # Side by side: each waits the whole timeout, and none waits for another.
        sent = list(
            pool.map(
                lambda _: send(harness, ca_file, row, path, timeout=gives_up + 2 * TIMEOUT_MARGIN),
                range(TIMEOUT_REQUESTS),
            )
        )
    in_time = [
        request.status == 504 and gives_up - 0.5 <= request.seconds <= gives_up + TIMEOUT_MARGIN for request in sent
    ]
    late = [request for request, held in zip(sent, in_time, strict=True) if not held]
    assert not late, (
        f"{policy.where} ({policy.describe()}) should answer 504 after {gives_up:g}s (+{TIMEOUT_MARGIN:g}s) when the "
        f"backend takes longer; GET {path}:\n"
        + "\n".join(request.line() for request in late)
        + shown(gateway_log(harness, sent), "gateway")
    )


@pytest.mark.parametrize("row", traffic.rows_with(INTERNET_ROWS, "retries"), ids=row_id)
def test_a_failing_backend_is_retried_as_the_route_says(row, harness, ca_file):
    """Requests to pods that answer 503 at FAILURE_RATE get through as often as the route's retries allow; in the
    same run, the other kind of method (POST for a GET row), which the routes retry differently, shows the contrast."""
    if harness.settings.gateway.gateway_api:
        pytest.skip(GATEWAY_API_RETRIES)
    prefix = traffic.fault_prefix(row.request.path)
    path = f"{prefix}/status/200:{1 - FAILURE_RATE:g},503:{FAILURE_RATE:g}"
    subject = same_route(row, path)
    # The control: the other kind of method, which the routes treat the other way (a POST for a GET row).
    control = same_route(row, path, "POST" if row.request.method in resilience.IDEMPOTENT_METHODS else "GET")
    warm_up(harness, ca_file, row)
    for probe_row in (subject, control):  # the two may share a route, and so a bucket
        harness.make_room_in_the_rate_limit(ca_file, probe_row, RETRIED_REQUESTS + CONTROL_REQUESTS)
    with faults_in_place_of(harness, ca_file, row, prefix, FAULT_REPLICAS):
        runs = [
            (probe_row, [send(harness, ca_file, probe_row, path) for _ in range(count)])
            for probe_row, count in ((subject, RETRIED_REQUESTS), (control, CONTROL_REQUESTS))
        ]
        tries = [access_log(harness, harness.settings.app_namespace, traffic.FAULT_LABEL, sent) for _, sent in runs]
    problems, evidence = [], []
    for (probe_row, sent), logged in zip(runs, tries, strict=True):
        policy, method = offline_policy(probe_row), probe_row.request.method
        answered = sum(request.status == 200 for request in sent)
        expected = traffic.success_probability(policy, FAILURE_RATE)
        problems.append(
            traffic.binomial_problem(
                f"{method} answered 200 ({policy.describe()})", answered, len(sent), expected, SIGMAS
            )
        )
        if policy.retries.on & traffic.RETRIED_ON_503 and len(logged) <= len(sent):
            problems.append(f"the fault pods logged {len(logged)} tries of {len(sent)} {method}s: none retried")
        evidence.append(shown(logged, f"fault pods' sidecars, {method} tries"))
    problems = [problem for problem in problems if problem]
    every_request = [request for _, sent in runs for request in sent]
    assert not problems, (
        f"{path}, 503 at {FAILURE_RATE:.0%} per try, bound {SIGMAS:g} binomial standard deviations: "
        + "; ".join(problems)
        + "".join(evidence)
        + shown(gateway_log(harness, every_request), "gateway")
    )


def unretried_on_503(row: Row, path: str) -> Row | None:
    """The row's request to `path`, or a POST when its route retries the row's method on 503: with Istio's
    retry_previous_hosts the retry goes to another pod, and the client would never see the failing pod's answer
    (Istio's API retries a GET on 503; no route retries a POST on it)."""
    for method in dict.fromkeys((row.request.method, "POST")):
        probe_row = same_route(row, path, method)
        if not traffic.retried_on_503(offline_policy(probe_row)):
            return probe_row
    return None


def until_failed(harness, ca_file: str, row: Row, path: str, failures: int) -> list[Sent]:
    """Requests until `failures` of them got 503, each from the failing pod (no route retries them); at most
    BEFORE_EJECTION_LIMIT."""
    sent: list[Sent] = []
    while sum(request.status == 503 for request in sent) < failures and len(sent) < BEFORE_EJECTION_LIMIT:
        sent.append(send(harness, ca_file, row, path))
    return sent


@contextmanager
def failing_pod_beside(harness, ca_file: str, row: Row, workload: str, prefix: str) -> Iterator[str]:
    """One go-httpbin pod with the workload's labels beside its own pods, for the duration: the same Service and
    DestinationRule take it in. It answers {prefix}/status/503 with 503, where the workload's echo pods answer 200.
    Yields its pod name once the gateway sends it requests."""
    namespace = harness.settings.app_namespace
    live = json.loads(harness.kubectl("-n", namespace, "get", "deployment", workload, "-o", "json"))
    fault = traffic.fault_deployment(live, prefix, harness.settings, replicas=1)
    name = fault["metadata"]["name"]
    try:
        # Nothing the GitOps agent reconciles changes: the workload keeps its pods, the fault Deployment is extra.
        harness.apply(yaml.safe_dump(fault))
        commands.run_checked(commands.rollout_status(harness.tools, namespace, name))
        pod = harness.kubectl("-n", namespace, "get", "pods", "-l", f"{traffic.FAULT_LABEL}={name}", "-o", "name")

        def answered_by_the_failing_pod() -> Check:
            # /status/200 on both kinds of pod: the gateway learns of the endpoint without counting a 5xx against it.
            answer = send(harness, ca_file, row, f"{prefix}/status/200")
            return Check(answer.status == 200 and not answer.pod, f"{answer.line()} (go-httpbin names no pod)")

        eventually(answered_by_the_failing_pod, timeout=60, interval=0.2, consecutive=1)
        yield pod.strip().removeprefix("pod/")
    finally:
        harness.kubectl("-n", namespace, "delete", "deployment", name, "--ignore-not-found", "--wait")


def test_outlier_detection_ejects_a_failing_pod(harness, ca_file):  # harness first: without a cluster, its skip
    """One pod of the stable backend answers 503 to every request, the others 200. Once it has answered
    consecutive5xxErrors times, the gateway ejects it for baseEjectionTime: every request sent in that time
    succeeds. The failures before the ejection are the control: without them, "all succeed" would prove nothing."""
    candidates = [
        (row, share)
        for row in traffic.rows_with(INTERNET_ROWS, "circuit_breaking")
        for share in offline_traffic(row).shares
        if share.version == EJECTED_VERSION and share.weight > 0
    ]
    if not candidates:
        pytest.skip(f"no contract row with circuitBreaking routes internet requests to a {EJECTED_VERSION} version")
    row, share = candidates[0]
    detection, where = traffic.outlier_detection_towards(traffic.e2e_mesh()[0].docs, share.workload)
    assert detection is not None, f"{row.name!r} expects circuit breaking, but {where} ejects no pod answering 503"
    prefix = traffic.fault_prefix(row.request.path)
    path = f"{prefix}/status/503"
    subject = unretried_on_503(row, path)
    if subject is None:
        pytest.skip(f"every method's route to {path} retries 503 on another pod: no failure would reach the client")
    namespace = harness.settings.app_namespace
    commands.run_checked(commands.rollout_status(harness.tools, namespace, share.workload))
    live = json.loads(harness.kubectl("-n", namespace, "get", "deployment", share.workload, "-o", "json"))
    healthy_pods = int(live["spec"].get("replicas", 1))
    if not traffic.ejectable(healthy_pods, detection.max_ejection_percent):
        pytest.skip(
            f"{where}: maxEjectionPercent {detection.max_ejection_percent} lets Envoy eject no pod of "
            f"{healthy_pods + 1} (it ejects while (ejected + 1) / pods stays within it)"
        )
    failure_share = traffic.failure_share_while_in(offline_traffic(row).shares, share.workload, healthy_pods)
    required = traffic.requests_to_tell(failure_share, LUCK)
    if required > AFTER_EJECTION_LIMIT:
        pytest.skip(
            f"the failing pod would answer only {failure_share:.1%} of the requests: {required} would have to "
            f"succeed for the ejection to show, more than the {AFTER_EJECTION_LIMIT} that surely fit in "
            f"{detection.base_ejection_seconds:g}s"
        )
    gateway_pods = harness.gateway_pods()
    if gateway_pods != 1:
        pytest.skip(f"{gateway_pods} gateway pods, each ejecting on its own count of 503s: one is needed")
    warm_up(harness, ca_file, row)
    harness.make_room_in_the_rate_limit(ca_file, subject, BEFORE_EJECTION_LIMIT + AFTER_EJECTION_LIMIT)
    with failing_pod_beside(harness, ca_file, subject, share.workload, prefix) as failing_pod:
        before = until_failed(harness, ca_file, subject, path, detection.consecutive_errors)
        ejected_at = time.monotonic()
        time.sleep(EJECTION_SETTLE_SECONDS)
        after = []
        for _ in range(required):
            request = send(harness, ca_file, subject, path)
            after.append((request, time.monotonic() - ejected_at))
        sent = before + [request for request, _ in after]
        failing_pods_log = access_log(
            harness, namespace, f"{traffic.FAULT_LABEL}={traffic.fault_name(share.workload)}", sent
        )
    problems = traffic.ejection_problems(
        [request.status for request in before],
        [(request.status, seconds) for request, seconds in after],
        detection,
        failure_share,
        required,
    )
    answered_by = Counter(request.pod or f"status {request.status}" for request in sent)
    assert not problems, (
        f"{subject.request.method} {path}; {failing_pod} answers 503, {share.workload}'s {healthy_pods} other pods "
        f"200; {where} ejects after {detection.consecutive_errors} in a row for {detection.base_ejection_seconds:g}s. "
        f"All {required} requests after the ejection succeed by luck with probability "
        f"{(1 - failure_share) ** required:.1e} when nothing ejects the pod: "
        + "; ".join(problems)
        + f"\nanswered by: {dict(answered_by)}\n"
        + "\n".join(f"before: {request.line()}" for request in before)
        + "\n"
        + "\n".join(f"after {seconds:.1f}s: {request.line()}" for request, seconds in after)
        + shown(failing_pods_log, f"{failing_pod}'s sidecar")
        + shown(gateway_log(harness, sent), "gateway")
    )
