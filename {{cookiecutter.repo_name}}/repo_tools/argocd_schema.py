"""JSON Schemas for the Argo CD kinds this repo uses (Application, AppProject).

Argo CD publishes no offline schema package, so this covers the fields the repo writes: the
required ones, the known enum values, and no unknown keys at the levels a typo would hide in.
Extend it when you use more of Argo CD.
"""

SYNC_OPTIONS = [
    "Validate=false",
    "CreateNamespace=true",
    "PrunePropagationPolicy=foreground",
    "PrunePropagationPolicy=background",
    "PrunePropagationPolicy=orphan",
    "PruneLast=true",
    "ApplyOutOfSyncOnly=true",
    "ServerSideApply=true",
    "Replace=true",
    "FailOnSharedResource=true",
    "RespectIgnoreDifferences=true",
    "SkipDryRunOnMissingResource=true",
    "Prune=false",
    "Delete=false",
]

_STRINGS = {"type": "array", "items": {"type": "string"}}
_METADATA = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "minLength": 1}}}
_DESTINATION = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"server": {"type": "string"}, "name": {"type": "string"}, "namespace": {"type": "string"}},
    "oneOf": [{"required": ["server"]}, {"required": ["name"]}],
}
_SOURCE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["repoURL"],
    "properties": {
        "repoURL": {"type": "string", "minLength": 1},
        "targetRevision": {"type": "string", "minLength": 1},
        "path": {"type": "string"},
        "chart": {"type": "string"},
        "ref": {"type": "string"},
        "name": {"type": "string"},
        "helm": {"type": "object"},
        "kustomize": {"type": "object"},
        "directory": {"type": "object"},
        "plugin": {"type": "object"},
    },
    "oneOf": [{"required": ["path"]}, {"required": ["chart"]}, {"required": ["ref"]}],
}
_SYNC_POLICY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "automated": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "prune": {"type": "boolean"},
                "selfHeal": {"type": "boolean"},
                "allowEmpty": {"type": "boolean"},
                "enabled": {"type": "boolean"},
            },
        },
        "syncOptions": {"type": "array", "items": {"enum": SYNC_OPTIONS}},
        "retry": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "limit": {"type": "integer"},
                "refresh": {"type": "boolean"},
                "backoff": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "duration": {"type": "string", "pattern": "^[0-9]+(s|m|h)$"},
                        "factor": {"type": "integer", "minimum": 1},
                        "maxDuration": {"type": "string", "pattern": "^[0-9]+(s|m|h)$"},
                    },
                },
            },
        },
        "managedNamespaceMetadata": {"type": "object"},
    },
}
_IGNORE_DIFFERENCE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["kind"],
    "properties": {
        "group": {"type": "string"},
        "kind": {"type": "string", "minLength": 1},
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "jsonPointers": _STRINGS,
        "jqPathExpressions": _STRINGS,
        "managedFieldsManagers": _STRINGS,
    },
    "anyOf": [
        {"required": ["jsonPointers"]},
        {"required": ["jqPathExpressions"]},
        {"required": ["managedFieldsManagers"]},
    ],
}


def _resource(spec: dict) -> dict:
    """A top-level Argo CD object: named metadata and a spec with no unknown keys."""
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"metadata": _METADATA, "spec": {"type": "object", "additionalProperties": False, **spec}},
    }


_GROUP_KINDS = {"type": "array", "items": {"type": "object", "required": ["group", "kind"]}}

APPLICATION = _resource(
    {
        "required": ["project", "destination"],
        "properties": {
            "project": {"type": "string", "minLength": 1},
            "source": _SOURCE,
            "sources": {"type": "array", "items": _SOURCE, "minItems": 1},
            "destination": _DESTINATION,
            "syncPolicy": _SYNC_POLICY,
            "ignoreDifferences": {"type": "array", "items": _IGNORE_DIFFERENCE},
            "revisionHistoryLimit": {"type": "integer"},
            "info": {"type": "array"},
        },
        "oneOf": [{"required": ["source"]}, {"required": ["sources"]}],
    }
)

APP_PROJECT = _resource(
    {
        "properties": {
            "description": {"type": "string"},
            "sourceRepos": _STRINGS,
            "sourceNamespaces": _STRINGS,
            "destinations": {"type": "array", "items": _DESTINATION},
            "clusterResourceWhitelist": _GROUP_KINDS,
            "clusterResourceBlacklist": _GROUP_KINDS,
            "namespaceResourceWhitelist": _GROUP_KINDS,
            "namespaceResourceBlacklist": _GROUP_KINDS,
            "roles": {"type": "array"},
            "syncWindows": {"type": "array"},
            "orphanedResources": {"type": "object"},
            "signatureKeys": {"type": "array"},
            "destinationServiceAccounts": {"type": "array"},
            "permitOnlyProjectScopedClusters": {"type": "boolean"},
        },
    }
)

SCHEMAS = {("argoproj.io/v1alpha1", "Application"): APPLICATION, ("argoproj.io/v1alpha1", "AppProject"): APP_PROJECT}
