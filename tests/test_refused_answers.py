"""Each bad answer is refused before anything is written, with one sentence naming the field and the rule."""

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import TEMPLATE, bake

REFUSED = {
    "a namespace with an underscore": ({"namespace": "shop_1"}, "namespace: 'shop_1' is not a DNS-1123 label"),
    "a namespace with a trailing newline": ({"namespace": "shop\n"}, "namespace: 'shop\\n' is not a DNS-1123 label"),
    "a namespace with capitals": ({"namespace": "Shop"}, "namespace: 'Shop' is not a DNS-1123 label"),
    "a namespace of 64 characters": ({"namespace": "n" * 64}, "is not a DNS-1123 label: use at most 63"),
    "the istio-system namespace": (
        {"namespace": "istio-system"},
        "namespace: 'istio-system' belongs to Kubernetes or Istio",
    ),
    "the default namespace": ({"namespace": "default"}, "namespace: 'default' belongs to Kubernetes or Istio"),
    "a frontend name with an underscore": (
        {"frontend_name": "web_ui"},
        "frontend_name: 'web_ui' cannot name a Service",
    ),
    "a backend name starting with a digit": ({"backend_name": "2api"}, "backend_name: '2api' cannot name a Service"),
    "the same name twice": ({"backend_name": "frontend"}, "backend_name: 'frontend' is already the frontend_name"),
    "a database named like the backend": (
        {"include_database": True, "database_name": "backend"},
        "database_name: 'backend' is already the backend_name",
    ),
    "a wildcard domain": ({"domain": "*.shop.example.com"}, "domain: '*.shop.example.com' is a wildcard"),
    "a single-label domain": ({"domain": "localhost"}, "domain: 'localhost' is not a valid DNS name"),
    "a domain with capitals": ({"domain": "Shop.Example.com"}, "domain: 'Shop.Example.com' is not a valid DNS name"),
    "a domain label of 64 characters": ({"domain": "a" * 64 + ".com"}, "is not a valid DNS name"),
    "port zero": ({"frontend_port": "0"}, "frontend_port: '0' is not a port number"),
    "a port above 65535": ({"backend_port": "65536"}, "backend_port: '65536' is not a port number"),
    "a port that is not a number": ({"frontend_port": "http"}, "frontend_port: 'http' is not a port number"),
    "a port with a leading zero": ({"frontend_port": "080"}, "frontend_port: '080' is not a port number"),
    "a port in other digits": ({"frontend_port": "\uff18\uff10"}, "is not a port number"),
    "a port the sidecar uses": ({"backend_port": "15006"}, "backend_port: 15006 is used by the Istio sidecar"),
    "a database port the sidecar uses": (
        {"include_database": True, "database_port": "15090"},
        "database_port: 15090 is used by the Istio sidecar",
    ),
    "the api prefix /": ({"api_prefix": "/"}, "api_prefix: '/' must be a path like '/api'"),
    "an issuer over plain http": (
        {"jwt_issuer": "http://auth.example.com"},
        "jwt_issuer: 'http://auth.example.com' must be an https URL",
    ),
    "a JWKS URL with a query": (
        {"jwks_uri": "https://auth.example.com/keys?all=1"},
        "jwks_uri: 'https://auth.example.com/keys?all=1' must be an https URL",
    ),
    "no time for the api": (
        {"api_timeout_seconds": "0"},
        "api_timeout_seconds: '0' must be a whole number of seconds from 1 to 300",
    ),
    "retries that multiply an outage": (
        {"api_retry_attempts": "6"},
        "api_retry_attempts: '6' must be a whole number of retries from 0 to 5",
    ),
    "a backend name with no room for its canary": (
        {"backend_name": "b" * 57},
        f"backend_name: {'b' * 57!r} is too long: the canary's Service adds '-canary', so use at most 56 characters.",
    ),
    "a frontend named as the backend's canary": (
        {"frontend_name": "backend-canary"},
        "frontend_name: 'backend-canary' is already the backend's canary",
    ),
    "an api prefix without a leading slash": ({"api_prefix": "api"}, "api_prefix: 'api' must be a path"),
    "an api prefix with a trailing slash": ({"api_prefix": "/api/"}, "api_prefix: '/api/' must be a path"),
    "an api prefix with a wildcard": ({"api_prefix": "/api/*"}, "api_prefix: '/api/*' must be a path"),
    "an api prefix with a dot-dot segment": (
        {"api_prefix": "/api/../admin"},
        "api_prefix: '/api/../admin' has a '.' or '..' segment; Istio normalizes request paths",
    ),
    "an api prefix with a dot segment": ({"api_prefix": "/./api"}, "api_prefix: '/./api' has a '.' or '..' segment"),
    "an api prefix with a double slash": ({"api_prefix": "/api//v1"}, "api_prefix: '/api//v1' must be a path"),
    "an api prefix with an encoded slash": ({"api_prefix": "/api%2Fv1"}, "api_prefix: '/api%2Fv1' must be a path"),
    "a namespace YAML reads as a date": (
        {"namespace": "2024-01-01", "domain": "shop.example.com"},
        "namespace: '2024-01-01' reads as a date in YAML",
    ),
    "template syntax in an answer": (
        {"frontend_image": "myorg/{{ 7*7 }}:v1"},
        "frontend_image: 'myorg/{{ 7*7 }}:v1' contains template syntax; answers are data",
    ),
    "a health path without a leading slash": ({"backend_health_path": "healthz"}, "backend_health_path: 'healthz'"),
    "an image with capitals": (
        {"frontend_image": "MyOrg/Frontend:v1"},
        "frontend_image: 'MyOrg/Frontend:v1' is not a valid image",
    ),
    "an image with an empty tag": (
        {"backend_image": "myorg/backend:"},
        "backend_image: 'myorg/backend:' is not a valid image",
    ),
    "an image with a short digest": ({"backend_image": "myorg/backend@sha256:abc"}, "is not a valid image reference"),
    "a database image with spaces": (
        {"include_database": True, "database_image": "postgres 17"},
        "database_image: 'postgres 17' is not a valid image",
    ),
    "an e-mail without a domain": ({"acme_email": "platform"}, "acme_email: 'platform' is not an e-mail address"),
    "an Istio release without v1 APIs": (
        {"istio_version": "1.21.0"},
        "istio_version: '1.21.0' must be a full Istio release",
    ),
    "an Istio version that is not a release": ({"istio_version": "latest"}, "istio_version: 'latest' must be"),
    "a Kubernetes version with a v": ({"kubernetes_version": "v1.34"}, "kubernetes_version: 'v1.34' must be"),
    "a Kubernetes version kind has no node image for": (
        {"kubernetes_version": "1.28"},
        "kubernetes_version: '1.28' must be",
    ),
    "a git URL that is a local path": (
        {"git_repo_url": "/srv/git/shop"},
        "git_repo_url: '/srv/git/shop' is not a Git URL",
    ),
    "a git URL over plain http": (
        {"git_repo_url": "http://example.com/shop.git"},
        "git_repo_url: 'http://example.com/shop.git'",
    ),
    "a branch with two dots": ({"git_branch": "main..dev"}, "git_branch: 'main..dev' is not a valid branch name"),
    "a repo name with a slash": ({"repo_name": "team/shop"}, "repo_name: 'team/shop' must be a directory name"),
    "a blank project name": ({"project_name": "   ", "repo_name": "shop-gitops"}, "project_name: must be non-empty"),
}


def files_left(output_dir: Path) -> list[Path]:
    return [path for path in output_dir.rglob("*") if not path.is_dir()]


def assert_refused_without_output(result: Any, output_dir: Path) -> None:
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert not output_dir.exists(), "a refused bake left its output directory behind"


def test_the_left_behind_check_sees_what_an_accepted_bake_writes(cookies, tmp_path):
    result = bake(cookies)
    assert result.exit_code == 0 and result.project_path.parent == tmp_path / "cookies" / "bake00"
    assert files_left(tmp_path / "cookies" / "bake00")


@pytest.mark.parametrize(("answers", "sentence"), REFUSED.values(), ids=REFUSED.keys())
def test_a_bad_answer_is_refused_before_anything_is_written(cookies, tmp_path, capfd, answers, sentence):
    result = bake(cookies, **answers)
    assert_refused_without_output(result, tmp_path / "cookies" / "bake00")
    errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("ERROR: ")]
    # Answers derived from the bad one (the domain from the namespace, ...) may be reported too.
    assert sentence in errors[0], errors
    assert all(error.endswith(".") for error in errors)


def test_every_bad_answer_is_reported_at_once(cookies, tmp_path, capfd):
    result = bake(
        cookies,
        namespace="Bad_NS",
        domain="shop.example.com",
        acme_email="a@example.com",
        frontend_port="0",
        api_prefix="/",
    )
    assert_refused_without_output(result, tmp_path / "cookies" / "bake00")
    err = capfd.readouterr().err
    assert [line.split(":")[1].strip() for line in err.splitlines() if line.startswith("ERROR: ")] == [
        "namespace",
        "frontend_port",
        "api_prefix",
    ]
    assert "Nothing was generated" in err
    assert "Traceback" not in err


def run_cookiecutter(output_dir: Path, *answers: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cookiecutter", "--no-input", "-o", str(output_dir), str(TEMPLATE), *answers]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def test_a_refused_bake_prints_one_sentence_per_bad_answer_and_nothing_else(tmp_path):
    accepted = run_cookiecutter(tmp_path / "accepted")
    assert accepted.returncode == 0 and files_left(tmp_path / "accepted")
    refused = run_cookiecutter(
        tmp_path / "refused", "namespace=Bad_NS", "domain=shop.example.com", "api_prefix=/api/../x", "repo_name=a/b"
    )
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr.splitlines() == [
        "ERROR: repo_name: 'a/b' must be a directory name of at most 100 letters, digits, '.', '_' and '-', "
        "starting with a letter or digit.",
        "ERROR: namespace: 'Bad_NS' is not a DNS-1123 label: use at most 63 lowercase letters, digits and '-', "
        "starting and ending with a letter or digit.",
        "ERROR: api_prefix: '/api/../x' has a '.' or '..' segment; Istio normalizes request paths before it matches "
        "routes, so a route on this prefix would never see a request. Write the path as clients resolve it.",
        "Nothing was generated; fix the answers above and run cookiecutter again.",
    ]
    assert not (tmp_path / "refused").exists()


def test_an_answer_left_at_a_default_made_from_a_refused_one_is_not_named_again(tmp_path):
    # jwt_issuer, jwks_uri and acme_email are made from the domain by default: one sentence, for the domain.
    refused = run_cookiecutter(tmp_path / "out", "domain={{ 1/0 }}")
    assert [line.split(":")[1].strip() for line in refused.stderr.splitlines() if line.startswith("ERROR: ")] == [
        "domain"
    ]
    # Given explicitly, a bad issuer is named beside the domain.
    refused = run_cookiecutter(tmp_path / "out", "domain={{ 1/0 }}", "jwt_issuer=http://auth.example.com")
    assert [line.split(":")[1].strip() for line in refused.stderr.splitlines() if line.startswith("ERROR: ")] == [
        "domain",
        "jwt_issuer",
    ]
    # A project name with nothing to make a slug of is named itself, not the repo name and namespace made from it.
    refused = run_cookiecutter(tmp_path / "out", "project_name=~")
    assert refused.stderr.splitlines()[0].startswith("ERROR: project_name: '~' has no letter or digit")
    assert len(refused.stderr.splitlines()) == 2
    given = run_cookiecutter(tmp_path / "out", "project_name=~", "repo_name=shop", "namespace=shop")
    assert given.returncode == 0, given.stderr


def test_a_choice_outside_the_list_is_refused(cookies):
    result = bake(cookies, gitops_tool="jenkins")
    assert result.exit_code != 0 and result.project_path is None
