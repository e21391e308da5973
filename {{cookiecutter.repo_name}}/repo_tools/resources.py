"""The ground floor every rule stands on: how a resource is named in a message, found by kind and matched by
labels, how Istio names a workload's identity and a Service's host, and how its StringMatch compares. It imports
nothing of the repo's, so the mesh
model and the rules load without any schema tooling."""

import re
from collections.abc import Iterable, Iterator

TRUST_DOMAIN = "cluster.local"


class Unmodelled(Exception):
    """A construct the traffic model does not follow; the message names the resource and the construct."""


WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}


def describe(doc: dict) -> str:
    metadata = doc.get("metadata") or {}
    namespace = f"{metadata['namespace']}/" if metadata.get("namespace") else ""
    return f"{doc.get('kind')} {namespace}{metadata.get('name')}"


def of_kind(docs: Iterable[dict], *kinds: str) -> Iterator[dict]:
    return (doc for doc in docs if doc.get("kind") in kinds)


def namespace_of(doc: dict) -> str:
    return doc.get("metadata", {}).get("namespace", "")


def name_of(doc: dict) -> str:
    return doc.get("metadata", {}).get("name", "")


def selects(selector: dict, labels: dict) -> bool:
    """Does a matchLabels-style selector pick these labels?"""
    return all(labels.get(key) == value for key, value in selector.items())


def pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"].get("metadata", {}).get("labels", {})


def principal(namespace: str, service_account: str) -> str:
    """The identity Istio gives a workload's mTLS certificate, as AuthorizationPolicies name it."""
    return f"{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}"


def service_fqdn(host: str, namespace: str) -> str:
    """A Service host as Istio reads it: short names and name.namespace resolve from `namespace`."""
    name, _, rest = host.partition(".")
    return f"{name}.{rest.split('.')[0] if rest else namespace}.svc.cluster.local"


def string_match(spec: dict, value: str, ignore_case: bool = False) -> bool:
    if ignore_case:
        value = value.lower()
        spec = {k: v.lower() if k != "regex" else v for k, v in spec.items()}
    if "exact" in spec:
        return value == spec["exact"]
    if "prefix" in spec:
        return value.startswith(spec["prefix"])
    if "regex" in spec:
        return re.fullmatch(spec["regex"], value) is not None
    raise Unmodelled(f"string match {spec}")
