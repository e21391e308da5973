"""The rules every answer must meet, and how answers reach YAML.

Checked in the cookiecutter process, after the last answer is known and before anything is written
(cookiecutter.json's last key, "__checked_answers", calls refuse_bad_answers). A refusal prints one sentence per
problem naming the answer and the rule, then the line saying nothing was generated, and exits 1: no
traceback, nothing on disk.
"""

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

COOKIECUTTER_JSON = Path(__file__).resolve().parent.parent / "cookiecutter.json"
SLUGGED = {"repo_name", "namespace"}  # made from project_name by default

DNS1123_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
REPO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
URL_PATH = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")
HEALTH_PATH = re.compile(r"^/[A-Za-z0-9._~/-]*$")
PORT = re.compile(r"^[1-9][0-9]{0,4}$")
WHOLE_NUMBER = re.compile(r"^(0|[1-9][0-9]{0,5})$")
HTTPS_URL = re.compile(r"^https://[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?(:[1-9][0-9]{0,4})?(/[A-Za-z0-9._~-]+)*/?$")
EMAIL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._%+-]*@[a-z0-9.-]+\.[a-z]{2,}$")
ISTIO_VERSION = re.compile(r"^1\.(\d+)\.\d+$")
GIT_URL = re.compile(
    r"^(https://|ssh://)[A-Za-z0-9.-]+(:[0-9]+)?/[A-Za-z0-9._~/-]+$|^git@[A-Za-z0-9.-]+:[A-Za-z0-9._~/-]+$"
)
# A practical subset of git-check-ref-format: no spaces, no "..", no leading "-" or "/", no trailing "/" or ".lock".
GIT_BRANCH = re.compile(r"^(?!-)(?!.*\.\.)(?!.*//)(?!/)[A-Za-z0-9._/-]{1,200}(?<!/)(?<!\.lock)$")
TEMPLATE_SYNTAX = re.compile(r"\{\{|\{%|\{#|\}\}|%\}|#\}")

# Image reference grammar of the OCI distribution spec: [host[:port]/]path[:tag][@digest].
_IMAGE_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_HOST = (
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]+)?/)"
)
IMAGE = re.compile(
    rf"^{_IMAGE_HOST}?{_IMAGE_COMPONENT}(?:/{_IMAGE_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)

# Plain scalars that are not strings to YAML 1.2's core schema (kustomize) or to go-yaml v2's YAML 1.1 (kubectl's
# sigs.k8s.io/yaml, which also reads y and n as booleans); PyYAML is asked for the rest of YAML 1.1.
NON_STRING_SCALAR = re.compile(
    r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+|[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)|true|True|TRUE|false|False|FALSE|null|Null|NULL|~|y|Y|n|N|)$"
)
# kustomize turns a namespace that YAML 1.1 reads as a date into a timestamp while it patches, quoted or not.
YAML_DATE = re.compile(r"^[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}$")

# Ports the Istio sidecar itself listens on inside every pod.
ISTIO_PROXY_PORTS = {15000, 15001, 15004, 15006, 15008, 15009, 15020, 15021, 15053, 15090}
RESERVED_NAMESPACES = {"default", "kube-system", "kube-public", "kube-node-lease", "istio-system"}
ENVIRONMENT_PREFIXES = ("dev.", "staging.", "e2e.")
OLDEST_ISTIO_MINOR = 22  # networking.istio.io/v1 and security.istio.io/v1 are served from 1.22 on
NOTHING_GENERATED = "Nothing was generated; fix the answers above and run cookiecutter again."


def yaml_str(value: Any) -> str:
    """The answer as a YAML scalar that every YAML reader takes for this very string."""
    text = str(value)
    try:
        read_back = yaml.safe_load(text)
    except yaml.YAMLError:
        read_back = None
    if read_back == text and not NON_STRING_SCALAR.fullmatch(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def check_template_syntax(answers: dict) -> list[str]:
    return [
        f"{field}: {value!r} contains template syntax; answers are data, so write it without "
        "'{{', '}}', '{%', '%}', '{#' and '#}'."
        for field, value in answers.items()
        if not field.startswith("_") and isinstance(value, str) and TEMPLATE_SYNTAX.search(value)
    ]


# Each names a workload's Service, so no two may be the same; the database's only with a database.
WORKLOAD_NAMES = ("frontend_name", "backend_name", "database_name")


def check_workload_names(answers: dict) -> list[str]:
    fields = [field for field in WORKLOAD_NAMES if field != "database_name" or answers["include_database"] is True]
    problems = [
        f"{field}: {answers[field]!r} cannot name a Service: use a DNS-1035 label, at most 63 lowercase "
        "letters, digits and '-', starting with a letter and ending with a letter or digit."
        for field in fields
        if not DNS1035_LABEL.fullmatch(str(answers[field]))
    ]
    suffix = answers["_canary_suffix"]
    canary = f"{answers['backend_name']}{suffix}"
    if not problems and not DNS1035_LABEL.fullmatch(canary):
        problems.append(
            f"backend_name: {answers['backend_name']!r} is too long: the canary's Service adds {suffix!r}, "
            f"so use at most {63 - len(suffix)} characters."
        )
    seen: dict[str, str] = {canary: "backend's canary"}
    for field in fields:
        name = answers[field]
        if name in seen:
            problems.append(f"{field}: {name!r} is already the {seen[name]}; each workload needs its own name.")
        seen.setdefault(name, field)
    return problems


def check_whole_number(field: str, value: object, low: int, high: int, meaning: str) -> list[str]:
    text = str(value)
    if not WHOLE_NUMBER.fullmatch(text) or not low <= int(text) <= high:
        return [f"{field}: {text!r} must be a whole number of {meaning} from {low} to {high}, without leading zeros."]
    return []


def check_namespace(namespace: str) -> list[str]:
    if not DNS1123_LABEL.fullmatch(namespace):
        return [
            f"namespace: {namespace!r} is not a DNS-1123 label: use at most 63 lowercase letters, digits "
            "and '-', starting and ending with a letter or digit."
        ]
    if YAML_DATE.fullmatch(namespace):
        return [f"namespace: {namespace!r} reads as a date in YAML, and kustomize would rewrite it as a timestamp."]
    if namespace in RESERVED_NAMESPACES:
        return [f"namespace: {namespace!r} belongs to Kubernetes or Istio; choose a namespace of the app's own."]
    return []


def check_domain(domain: str) -> list[str]:
    if "*" in domain:
        return [f"domain: {domain!r} is a wildcard; the gateway must serve one exact host name."]
    labels = domain.split(".")
    longest = max(len(prefix) for prefix in ENVIRONMENT_PREFIXES) + len(domain)
    if len(labels) < 2 or not all(DNS1123_LABEL.fullmatch(label) for label in labels) or longest > 253:
        return [
            f"domain: {domain!r} is not a valid DNS name: use two or more dot-separated labels of lowercase "
            "letters, digits and '-' (at most 63 each, and at most 245 in all so that 'staging.' fits in front)."
        ]
    return []


def check_port(field: str, value: object) -> list[str]:
    text = str(value)
    if not PORT.fullmatch(text) or int(text) > 65535:
        return [f"{field}: {text!r} is not a port number; write a whole number from 1 to 65535 without leading zeros."]
    if int(text) in ISTIO_PROXY_PORTS:
        return [f"{field}: {text} is used by the Istio sidecar in every pod; choose another port."]
    return []


def check_api_prefix(prefix: str) -> list[str]:
    if not URL_PATH.fullmatch(prefix):
        return [
            f"api_prefix: {prefix!r} must be a path like '/api' or '/v1/api': it starts with '/', is not '/' "
            "alone, has no trailing '/' or '//' and uses only letters, digits and '.', '_', '~', '-'."
        ]
    if any(segment in (".", "..") for segment in prefix.split("/")):
        return [
            f"api_prefix: {prefix!r} has a '.' or '..' segment; Istio normalizes request paths before it matches "
            "routes, so a route on this prefix would never see a request. Write the path as clients resolve it."
        ]
    return []


def check_health_path(field: str, path: str) -> list[str]:
    if not HEALTH_PATH.fullmatch(path):
        return [f"{field}: {path!r} must be a URL path starting with '/' (letters, digits, '/', '.', '_', '~', '-')."]
    return []


def check_image(field: str, image: str) -> list[str]:
    if len(image) > 255 or not IMAGE.fullmatch(image):
        return [
            f"{field}: {image!r} is not a valid image reference; write [registry/]repository[:tag][@sha256:digest] "
            "with a lowercase repository, e.g. 'ghcr.io/myorg/frontend:v1'."
        ]
    return []


def check_versions(answers: dict) -> list[str]:
    problems = []
    istio = ISTIO_VERSION.fullmatch(str(answers["istio_version"]))
    if not istio or int(istio.group(1)) < OLDEST_ISTIO_MINOR:
        problems.append(
            f"istio_version: {answers['istio_version']!r} must be a full Istio release 1.{OLDEST_ISTIO_MINOR}.0 "
            "or newer, such as '1.30.8'."
        )
    node_images = answers["_kind_node_images"]
    if str(answers["kubernetes_version"]) not in node_images:
        problems.append(
            f"kubernetes_version: {answers['kubernetes_version']!r} must be a Kubernetes minor version the pinned "
            f"kind release has a node image for, written like '1.34': one of {', '.join(sorted(node_images))}."
        )
    return problems


def problems_with(answers: dict) -> list[str]:
    """One sentence per refused answer (its first problem). An answer left at its default is not named when that
    default is made from a refused answer: fixing the one fixes both."""
    first: dict[str, str] = {}
    for problem in every_problem(answers):
        first.setdefault(problem.split(":", 1)[0], problem)
    project_name = str(answers["project_name"])
    if "project_name" not in first and not re.search(r"[A-Za-z0-9]", project_name) and first.keys() & SLUGGED:
        first = {
            "project_name": f"project_name: {project_name!r} has no letter or digit (A-Z, a-z, 0-9) to name the "
            "repo and the namespace after; add one, or give repo_name and namespace yourself.",
            **first,
        }
    derived = derived_from(set(first), answers)
    return [problem for field, problem in first.items() if field not in derived]


def derived_from(refused: set[str], answers: dict) -> set[str]:
    """The answers whose value is still their default (cookiecutter.json) made from a refused answer, or from one
    of these, in the order cookiecutter asks."""
    from cookiecutter.environment import StrictEnvironment

    environment = StrictEnvironment()
    derived: set[str] = set()
    for field, default in json.loads(COOKIECUTTER_JSON.read_text()).items():
        sources = set(re.findall(r"cookiecutter\.(\w+)", default)) if isinstance(default, str) else set()
        if field.startswith("_") or not sources & (refused | derived):
            continue
        try:
            made = environment.from_string(default).render(cookiecutter=answers)
        except Exception:  # noqa: BLE001 - a default that no longer renders is not the answer given
            continue
        if made == str(answers.get(field)):
            derived.add(field)
    return derived


def every_problem(answers: dict) -> list[str]:
    problems = check_template_syntax(answers)
    if not str(answers["project_name"]).strip() or not str(answers["project_name"]).isprintable():
        problems.append("project_name: must be non-empty printable text.")
    if not REPO_NAME.fullmatch(str(answers["repo_name"])):
        problems.append(
            f"repo_name: {answers['repo_name']!r} must be a directory name of at most 100 letters, digits, "
            "'.', '_' and '-', starting with a letter or digit."
        )
    problems += check_namespace(str(answers["namespace"]))
    problems += check_domain(str(answers["domain"]))
    problems += check_workload_names(answers)
    with_database = answers["include_database"] is True
    for role in ("frontend", "backend") + (("database",) if with_database else ()):
        problems += check_image(f"{role}_image", str(answers[f"{role}_image"]))
        problems += check_port(f"{role}_port", answers[f"{role}_port"])
    for role in ("frontend", "backend"):
        problems += check_health_path(f"{role}_health_path", str(answers[f"{role}_health_path"]))
    problems += check_api_prefix(str(answers["api_prefix"]))
    problems += check_whole_number("api_timeout_seconds", answers["api_timeout_seconds"], 1, 300, "seconds")
    problems += check_whole_number("api_retry_attempts", answers["api_retry_attempts"], 0, 5, "retries")
    for field in ("jwt_issuer", "jwks_uri"):
        if not HTTPS_URL.fullmatch(str(answers[field])):
            problems.append(
                f"{field}: {answers[field]!r} must be an https URL such as 'https://auth.example.com' (lowercase host, "
                "path of letters, digits and '.', '_', '~', '-'; no query)."
            )
    if not EMAIL.fullmatch(str(answers["acme_email"])):
        problems.append(f"acme_email: {answers['acme_email']!r} is not an e-mail address like 'platform@example.com'.")
    problems += check_versions(answers)
    if not GIT_URL.fullmatch(str(answers["git_repo_url"])):
        problems.append(
            f"git_repo_url: {answers['git_repo_url']!r} is not a Git URL the GitOps agent can pull; write "
            "https://host/org/repo.git, ssh://git@host/org/repo.git or git@host:org/repo.git."
        )
    if not GIT_BRANCH.fullmatch(str(answers["git_branch"])):
        problems.append(f"git_branch: {answers['git_branch']!r} is not a valid branch name.")
    if not isinstance(answers["include_database"], bool):
        problems.append(f"include_database: {answers['include_database']!r} must be yes or no.")
    return problems


def refuse_bad_answers(answers: dict) -> str:
    problems = problems_with(answers)
    if not problems:
        return ""
    for problem in problems:
        print(f"ERROR: {problem}", file=sys.stderr)
    print(NOTHING_GENERATED, file=sys.stderr)
    raise SystemExit(1)
