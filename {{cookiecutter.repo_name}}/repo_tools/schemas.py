"""Validate rendered documents against schemas, offline.

Built-in kinds use the Kubernetes OpenAPI schemas of kubernetes-validate in strict mode.
Custom resources use, in this order:
1. the CustomResourceDefinitions of the versions this repo installs, when recorded upstream output is at hand
   ($RECORDED_FIXTURES: Istio's base chart and cert-manager's chart as rendered for the pinned versions, the
   Gateway API and Argo CD CRDs), made strict: an object refuses fields its schema does not list, and their CEL
   rules (x-kubernetes-validations) are evaluated as the API server would, defaults applied first; without them,
   the Gateway API's CRDs are downloaded from its release URL at the pinned version (no typed models exist);
2. otherwise the typed models of cloudcoil (Istio, cert-manager, Flux; they stop at Istio 1.24 on Python 3.11);
   as those drop unknown fields silently, every field of the input is also checked to have survived parsing;
3. for Argo CD, the hand-written schemas in argocd_schema.py.
A kind with no schema here is an error: extend CUSTOM_RESOURCE_MODELS (or ARGOCD_SCHEMAS) rather than skip it.

`python -m repo_tools` keeps each document's result in .cache/ under a fingerprint of everything that decides it
(this code, the schema packages' versions, the Kubernetes version, the recorded CRDs), so an unchanged document
is not validated twice; importing the typed models alone takes seconds.
"""

import copy
import hashlib
import importlib
import json
import os
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pydantic
import yaml

from repo_tools import (
    CACHE_DIR,
    KUBERNETES_VERSION,
    VERSIONS,
    charts,
    kustomize,
    remove_unused,
    write_atomically,
)
from repo_tools.argocd_schema import SCHEMAS as ARGOCD_SCHEMAS
from repo_tools.resources import describe

# kubernetes_validate reads a kind's schema and its large _definitions.json from disk for every document it
# validates: read each file once per run (it does not change the schemas it reads).
kubernetes_validate.utils.schema_contents = cache(kubernetes_validate.utils.schema_contents)

CUSTOM_RESOURCE_MODELS = {
    "networking.istio.io/v1": "cloudcoil.models.istio.networking.v1",
    "networking.istio.io/v1beta1": "cloudcoil.models.istio.networking.v1beta1",
    "networking.istio.io/v1alpha3": "cloudcoil.models.istio.networking.v1alpha3",
    "security.istio.io/v1": "cloudcoil.models.istio.security.v1",
    "security.istio.io/v1beta1": "cloudcoil.models.istio.security.v1beta1",
    "telemetry.istio.io/v1": "cloudcoil.models.istio.telemetry.v1",
    "extensions.istio.io/v1alpha1": "cloudcoil.models.istio.extensions.v1alpha1",
    "cert-manager.io/v1": "cloudcoil.models.cert_manager.v1",
    "acme.cert-manager.io/v1": "cloudcoil.models.cert_manager.acme.v1",
    "helm.toolkit.fluxcd.io/v2": "cloudcoil.models.fluxcd.helm.v2",
    "kustomize.toolkit.fluxcd.io/v1": "cloudcoil.models.fluxcd.kustomize.v1",
    "source.toolkit.fluxcd.io/v1": "cloudcoil.models.fluxcd.source.v1",
}


SCHEMA_PACKAGES = (
    "kubernetes-validate",
    "jsonschema",
    "pydantic",
    "cloudcoil",
    "cel-python",
    *(f"cloudcoil.models.{name}" for name in ("istio", "cert-manager", "fluxcd")),
)
_disk: dict[str, list[str]] | None = None
# The schema exists but cannot be had on this machine (no recordings, no network): not a fault of the document.
NO_SCHEMA_AT_HAND = "no schema at hand: "
REQUIRE_RECORDED_FIXTURES = "REQUIRE_RECORDED_FIXTURES"


def unavailable_reason() -> str:
    """Why the Gateway API's kinds cannot be validated on this machine, or "" when they can (or the repo has none)."""
    version = VERSIONS.get("GATEWAY_API_VERSION")
    if not version or any(api.startswith("gateway.networking.k8s.io/") for api, _ in installed_crd_schemas()):
        return ""
    url = charts.GATEWAY_API_RELEASE_URL.format(version=version)
    return f"the Gateway API's CRDs are recorded nowhere here and {url} could not be downloaded"


def without_unavailable_schemas(errors: list[str]) -> tuple[list[str], list[str]]:
    """(errors, documents left unchecked for want of their schema). Where $REQUIRE_RECORDED_FIXTURES is set (CI),
    a schema that cannot be had is an error like any other."""
    if os.environ.get(REQUIRE_RECORDED_FIXTURES):
        return errors, []
    return [error for error in errors if NO_SCHEMA_AT_HAND not in error], [
        error for error in errors if NO_SCHEMA_AT_HAND in error
    ]


def schema_errors(doc: dict) -> list[str]:
    """Every way the document breaks its kind's schema, each naming the resource and the field."""
    doc_json = json.dumps(doc, sort_keys=True)
    if _disk is None:
        return [f"{describe(doc)}: {error}" for error in _errors(doc_json)]
    key = hashlib.sha256(doc_json.encode()).hexdigest()
    if key not in _disk:
        _disk[key] = list(_errors(doc_json))
    return [f"{describe(doc)}: {error}" for error in _disk[key]]


def fingerprint() -> str:
    """What decides a document's result besides the document: code, package versions, Kubernetes, CRDs."""
    parts = [KUBERNETES_VERSION, Path(__file__).read_text(), (Path(__file__).parent / "argocd_schema.py").read_text()]
    parts += [f"{name}=={installed_version(name)}" for name in SCHEMA_PACKAGES]
    parts += [f"{path}:{path.stat().st_size}:{path.stat().st_mtime_ns}" for path in crd_sources()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def installed_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def cache_file() -> Path:
    return CACHE_DIR / f"schema-results-{fingerprint()}.json"


def use_disk_cache() -> None:
    """Read earlier results for this fingerprint; save_disk_cache() writes them back with the new ones."""
    global _disk
    try:
        _disk = json.loads(cache_file().read_text())
    except (OSError, ValueError):  # none yet, or cut short by a run that was stopped: start afresh
        _disk = {}


def save_disk_cache() -> None:
    """Write this run's results merged with those other runs sharing the cache saved meanwhile; remove the results
    of other fingerprints that no run has used for a day (another Kubernetes version may be in use beside this one)."""
    if _disk is None:
        return
    current = cache_file()
    kept = [current, CACHE_DIR / current.name.replace("schema-results-", "crd-schemas-")]
    others = [*CACHE_DIR.glob("schema-results-*.json"), *CACHE_DIR.glob("crd-schemas-*.json")]
    remove_unused(path for path in others if path not in kept)
    try:
        saved = json.loads(current.read_text())
    except (OSError, ValueError):
        saved = {}
    write_atomically(current, json.dumps(saved | _disk))


@cache
def _errors(doc_json: str) -> tuple[str, ...]:
    doc = json.loads(doc_json)
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        return ()
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(part) for part in error.path) or "(document)"
        return (f"{path}: {error.message}",)
    except kubernetes_validate.SchemaNotFoundError:
        return tuple(_custom_resource_errors(doc))


def strict(schema: dict) -> dict:
    """An OpenAPI v3 schema of a CRD as JSON Schema that refuses fields it does not list."""
    result = dict(schema)
    if result.pop("x-kubernetes-int-or-string", False):
        result.pop("type", None)
        result["type"] = ["integer", "string"]
    if result.pop("nullable", False) and isinstance(result.get("type"), str):
        result["type"] = [result["type"], "null"]
    if "properties" in result:
        result["properties"] = {key: strict(value) for key, value in result["properties"].items()}
        if not result.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in result:
            result["additionalProperties"] = False
    if isinstance(result.get("additionalProperties"), dict):
        result["additionalProperties"] = strict(result["additionalProperties"])
    if isinstance(result.get("items"), dict):
        result["items"] = strict(result["items"])
    return result


def crd_sources() -> list[Path]:
    """The recorded files whose CRDs are the schemas of the versions this repo installs. Without recordings, only
    the Gateway API's release file (no typed models exist for it), downloaded once into the cache."""
    recorded = charts.recordings()
    if recorded is None:
        release = charts.gateway_api_crds(VERSIONS.get("GATEWAY_API_VERSION", ""))
        return [release] if release is not None else []
    return [
        recorded.render("base", VERSIONS["ISTIO_VERSION"]),
        recorded.render("cert-manager", VERSIONS["CERT_MANAGER_VERSION"]),
        *recorded.crds(),
    ]


@cache
def installed_crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> strict schema, from the CRDs of the pinned versions; empty without recordings. Kept in
    the cache beside the schema results (the same fingerprint): the CRDs are megabytes of YAML to read."""
    kept = CACHE_DIR / f"crd-schemas-{fingerprint()}.json"
    try:
        return {(api_version, kind): schema for api_version, kind, schema in json.loads(kept.read_text())}
    except (OSError, ValueError):  # none yet, or cut short by a run that was stopped: read the CRDs
        pass
    found = _crd_schemas()
    write_atomically(kept, json.dumps([[api_version, kind, schema] for (api_version, kind), schema in found.items()]))
    return found


def _crd_schemas() -> dict[tuple[str, str], dict]:
    found = {}
    for source in crd_sources():
        for crd in yaml.load_all(source.read_text(), Loader=kustomize.SAFE_LOADER):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                if version.get("served") and "schema" in version:
                    api_version = f"{spec['group']}/{version['name']}"
                    schema = version["schema"]["openAPIV3Schema"]
                    # The API server adds these to every kind; CRD schemas often leave them out.
                    envelope = {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                    }
                    schema = schema | {"properties": envelope | schema.get("properties", {})}
                    found[(api_version, spec["names"]["kind"])] = strict(schema)
    return found


def _custom_resource_errors(doc: dict) -> list[str]:
    crd_schema = installed_crd_schemas().get((str(doc.get("apiVersion")), str(doc.get("kind"))))
    if crd_schema is not None:
        return _json_schema_errors(jsonschema.Draft7Validator(crd_schema), doc) + _cel_errors(crd_schema, doc)
    argocd_schema = ARGOCD_SCHEMAS.get((str(doc.get("apiVersion")), str(doc.get("kind"))))
    if argocd_schema is not None:
        return _json_schema_errors(jsonschema.Draft202012Validator(argocd_schema), doc)
    model = _model(doc.get("apiVersion", ""), doc.get("kind", ""))
    if model is None and str(doc.get("apiVersion")).startswith("gateway.networking.k8s.io/"):
        return [NO_SCHEMA_AT_HAND + (unavailable_reason() or "the repo pins no GATEWAY_API_VERSION in versions.env")]
    if model is None:
        return [
            f"no schema for apiVersion {doc.get('apiVersion')!r} kind {doc.get('kind')!r}; add its model to "
            "repo_tools/schemas.py CUSTOM_RESOURCE_MODELS"
        ]
    try:
        parsed = model.model_validate(doc)
    except pydantic.ValidationError as error:
        return [f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in error.errors()]
    kept = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
    return [f"{path}: unknown field" for path in _dropped_fields(doc, kept, "")]


def _cel_errors(schema: dict, doc: dict) -> list[str]:
    """The CRD's x-kubernetes-validations rules (CEL), evaluated as the API server does: on the object with its
    schema's defaults applied, each rule with `self` bound to the value where the rule sits. Transition rules
    (those reading oldSelf) need the object's previous version and are left to the cluster."""
    found: list[str] = []
    _check_rules(schema, _defaulted(schema, doc), "", found)
    return found


def _defaulted(schema: dict, value: Any) -> Any:
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        result = {key: _defaulted(_child_schema(schema, key) or {}, item) for key, item in value.items()}
        for key, child in properties.items():
            if key not in result and "default" in child:
                result[key] = _defaulted(child, copy.deepcopy(child["default"]))
        return result
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_defaulted(schema["items"], item) for item in value]
    return value


def _check_rules(schema: dict, value: Any, path: str, found: list[str]) -> None:
    import celpy  # only where a CRD has rules: its import is not free

    for rule in schema.get("x-kubernetes-validations") or []:
        if "oldSelf" in rule["rule"]:
            continue
        try:
            holds = _cel_program(rule["rule"]).evaluate({"self": celpy.json_to_cel(value)})
        except celpy.CELEvalError as error:
            holds = error
        if isinstance(holds, celpy.CELEvalError):
            reason = str(holds.args[0]).split(" (in activation")[0]
            found.append(f"{path or '(document)'}: rule {rule['rule']!r} fails to evaluate: {reason}")
        elif not holds:
            found.append(f"{path or '(document)'}: {rule.get('message') or rule['rule']}")
    if isinstance(value, dict):
        for key, item in value.items():
            child = _child_schema(schema, key)
            if child is not None:
                _check_rules(child, item, f"{path}.{key}" if path else key, found)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            _check_rules(schema["items"], item, f"{path}.{index}", found)


def _child_schema(schema: dict, key: str) -> dict | None:
    """The schema of one field of an object: a listed property, else the schema of its other fields, if any."""
    extra = schema.get("additionalProperties")
    return schema.get("properties", {}).get(key, extra if isinstance(extra, dict) else None)


@cache
def _cel_program(rule: str) -> Any:
    import celpy

    environment = celpy.Environment()
    return environment.program(environment.compile(rule), functions=_kubernetes_url_library())


def _kubernetes_url_library() -> dict[str, Any]:
    """The API server's CEL URL functions (Kubernetes' URL library), which CRDs such as Istio's use: a URL is an
    absolute URI or an absolute path, as Go's url.ParseRequestURI reads it."""
    from urllib.parse import urlsplit

    from celpy import CELEvalError, celtypes

    def is_url(text: str) -> bool:
        parts = urlsplit(text)
        return (bool(parts.scheme) and bool(parts.netloc or parts.path)) or text.startswith("/")

    def url(text: Any) -> Any:
        if not is_url(str(text)):
            return CELEvalError(f"URL parse error during conversion from string: {text}")
        return celtypes.StringType(text)

    def part(read: Any) -> Any:
        return lambda value: celtypes.StringType(read(urlsplit(str(value))))

    return {
        "url": url,
        "isURL": lambda text: celtypes.BoolType(is_url(str(text))),
        "getScheme": part(lambda parts: parts.scheme),
        "getHost": part(lambda parts: parts.netloc.rpartition("@")[2]),
        "getHostname": part(lambda parts: parts.hostname or ""),
        "getPort": part(lambda parts: str(parts.port or "")),
        "getEscapedPath": part(lambda parts: parts.path),
        "getQuery": part(lambda parts: parts.query),
    }


def _json_schema_errors(validator: Any, doc: dict) -> list[str]:
    return [
        message
        for error in sorted(validator.iter_errors(doc), key=lambda error: list(error.absolute_path))
        for message in _json_schema_messages(error)
    ]


def _json_schema_messages(error: jsonschema.ValidationError) -> list[str]:
    """One line per problem; unknown fields read as the models' checks word them."""
    path = ".".join(str(part) for part in error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties", {})
        return [f"{f'{path}.' if path else ''}{key}: unknown field" for key in error.instance if key not in known]
    return [f"{path or '(document)'}: {error.message}"]


def _model(api_version: str, kind: str) -> Any:
    from cloudcoil.resources import Resource  # slow to import: only when a model is needed

    module_name = CUSTOM_RESOURCE_MODELS.get(api_version)
    if module_name is None:
        return None
    model = getattr(importlib.import_module(module_name), kind, None)
    return model if isinstance(model, type) and issubclass(model, Resource) else None


def _dropped_fields(given: Any, kept: Any, path: str) -> list[str]:
    if isinstance(given, dict) and isinstance(kept, dict):
        dropped: list[str] = []
        for key, value in given.items():
            where = f"{path}.{key}" if path else key
            dropped += _dropped_fields(value, kept[key], where) if key in kept else [where]
        return dropped
    if isinstance(given, list) and isinstance(kept, list):
        return [
            field
            for index, (item, kept_item) in enumerate(zip(given, kept, strict=True))
            for field in _dropped_fields(item, kept_item, f"{path}.{index}")
        ]
    return []
