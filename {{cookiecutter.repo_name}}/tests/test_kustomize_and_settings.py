"""The kustomize wrapper reports kustomize's own words, and each shared setting is written once."""

import shutil
from pathlib import Path

import pytest
from conftest import GATEWAY_API, find, the_gateway

from repo_tools import REPO_ROOT, invariants, kustomize, layout


def test_a_broken_kustomization_raises_with_kustomizes_own_message(tmp_path: Path):
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - missing-deployment.yaml\n")
    with pytest.raises(kustomize.KustomizeError) as raised:
        kustomize.build(tmp_path)
    assert "missing-deployment.yaml" in str(raised.value)
    assert str(tmp_path) in str(raised.value)


def test_a_kustomize_path_that_does_not_exist_is_named(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KUSTOMIZE", "/nowhere/kustomize")
    with pytest.raises(kustomize.KustomizeError, match="KUSTOMIZE=/nowhere/kustomize is not an executable file"):
        kustomize.kustomize_command()


def test_without_kustomize_or_kubectl_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv("KUSTOMIZE", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(kustomize.KustomizeError, match="install kustomize v5"):
        kustomize.kustomize_command()


def test_kubectl_given_in_kustomize_runs_its_kustomize_subcommand(monkeypatch: pytest.MonkeyPatch):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH")
    monkeypatch.setenv("KUSTOMIZE", kubectl)
    assert kustomize.kustomize_command() == [kubectl, "kustomize"]


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    shutil.copytree(REPO_ROOT / "apps", tmp_path / "apps")
    return tmp_path


@pytest.mark.bake_independent
def test_a_build_is_kept_until_a_file_it_reads_changes(repo_copy: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(kustomize, "CACHE_DIR", repo_copy / "cache")
    overlay = repo_copy / "apps" / "overlays" / "dev"
    built = kustomize.render(overlay)
    (kept,) = (repo_copy / "cache" / "builds").glob("*.yaml")
    kept.write_text("kind: Kept\n")
    assert kustomize.render(overlay) == "kind: Kept\n"
    (repo_copy / "apps" / "overlays" / "staging" / "unrelated.yaml").write_text("kind: Unread\n")
    assert kustomize.render(overlay) == "kind: Kept\n"  # staging is no part of dev's build
    base = repo_copy / "apps" / "base" / "kustomization.yaml"  # read through the overlay's reference to the base
    base.write_text("# what kustomize does not read\n" + base.read_text())
    assert kustomize.render(overlay) == "kind: Kept\n"  # a comment in a kustomization changes no build
    namespace = repo_copy / "apps" / "base" / "namespace.yaml"  # a resource the base lists
    namespace.write_text(namespace.read_text() + "\n")
    assert kustomize.render(overlay) == built
    assert len(list((repo_copy / "cache" / "builds").glob("*.yaml"))) == 2


@pytest.mark.bake_independent
def test_a_kept_build_is_read_back_parsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(kustomize, "CACHE_DIR", tmp_path / "cache")
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - service.yaml\n")
    (tmp_path / "service.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n")
    assert [doc["metadata"]["name"] for doc in kustomize.build(tmp_path)] == ["web"]
    (parsed,) = (tmp_path / "cache" / "builds").glob("*.json")
    parsed.write_text('[{"kind": "Kept"}]')
    assert kustomize.build(tmp_path) == [{"kind": "Kept"}]
    (tmp_path / "service.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata:\n  name: api\n")
    assert [doc["metadata"]["name"] for doc in kustomize.build(tmp_path)] == ["api"]


@pytest.mark.bake_independent
def test_text_kustomize_leaves_unquoted_is_read_as_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(kustomize, "CACHE_DIR", tmp_path / "cache")
    data = {"since": "2024-01-01 10:00:00 +00:00", "separator": "=", "day": "2024-01-01", "flag": "on"}
    (tmp_path / "kustomization.yaml").write_text("configMapGenerator:\n  - name: settings\n    envs: [settings.env]\n")
    (tmp_path / "settings.env").write_text("".join(f"{key}={value}\n" for key, value in data.items()))
    stream = kustomize.render(tmp_path)
    assert "since: 2024-01-01 10:00:00 +00:00" in stream and "separator: =" in stream  # unquoted
    assert kustomize.build(tmp_path)[0]["data"] == data
    assert kustomize.build(tmp_path)[0]["data"] == data  # read back kept


@pytest.mark.bake_independent
@pytest.mark.parametrize(
    "kustomization",
    [
        "resources:\n  - https://example.com/release.yaml\n",
        "resources:\n  - github.com/example/config//apps?ref=main\n",
        "patches:\n  - path: https://example.com/patch.yaml\n",
        "configMapGenerator:\n  - name: settings\n    files: [https://example.com/settings.env]\n",
        "helmCharts:\n  - name: web\n    valuesFile: https://example.com/values.yaml\n",
        "helmGlobals:\n  chartHome: ../charts\n",
        "Resources:\n  - ../elsewhere\n",
    ],
    ids=[
        "remote-resource",
        "repository",
        "remote-patch",
        "remote-generator",
        "remote-values",
        "chart-home",
        "Resources",
    ],
)
def test_a_kustomization_reading_what_its_digest_cannot_follow_is_built_every_time(tmp_path: Path, kustomization):
    """Remote files and repositories change by themselves, kustomize reads a chart home wherever it lies, and it
    reads field names in any case."""
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - service.yaml\n")
    (tmp_path / "service.yaml").write_text("kind: Service\n")
    assert kustomize.inputs_digest(tmp_path) is not None
    (tmp_path / "kustomization.yaml").write_text(kustomization)
    assert kustomize.inputs_digest(tmp_path) is None


@pytest.mark.bake_independent
def test_a_kustomization_counts_by_what_it_says_and_its_file_name_not_its_comments(tmp_path: Path):
    (tmp_path / "service.yaml").write_text("kind: Service\n")
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - service.yaml\n")
    before = kustomize.inputs_digest(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("# the service\nresources: [service.yaml]\n")
    assert kustomize.inputs_digest(tmp_path) == before
    (tmp_path / "kustomization.yaml").rename(tmp_path / "kustomization.yml")  # origin annotations name it
    assert kustomize.inputs_digest(tmp_path) != before


@pytest.mark.bake_independent
def test_a_hidden_file_or_folder_a_kustomization_reads_is_part_of_its_build_and_the_cache_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(kustomize, "CACHE_DIR", tmp_path / ".cache")
    generator = "configMapGenerator:\n  - name: settings\n    envs: [.settings.env, .generated/more.env]\n"
    (tmp_path / "kustomization.yaml").write_text(generator)
    (tmp_path / ".generated").mkdir()
    (tmp_path / ".generated" / "more.env").write_text("color=blue\n")
    (tmp_path / ".settings.env").write_text("level=info\n")
    before = kustomize.inputs_digest(tmp_path)
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "kept.yaml").write_text("kind: Kept\n")
    assert kustomize.inputs_digest(tmp_path) == before
    (tmp_path / ".generated" / "more.env").write_text("color=green\n")
    after_generated = kustomize.inputs_digest(tmp_path)
    (tmp_path / ".settings.env").write_text("level=debug\n")
    assert len({before, after_generated, kustomize.inputs_digest(tmp_path)}) == 3


@pytest.mark.bake_independent
def test_a_folder_link_pointed_elsewhere_changes_the_build(tmp_path: Path):
    for version in ("v1", "v2"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "settings.env").write_text(f"version={version}\n")
    (tmp_path / "current").symlink_to("v1")
    (tmp_path / "kustomization.yaml").write_text("configMapGenerator:\n  - name: s\n    envs: [current/settings.env]\n")
    before = kustomize.inputs_digest(tmp_path)
    (tmp_path / "current").unlink()
    (tmp_path / "current").symlink_to("v2")
    assert kustomize.inputs_digest(tmp_path) != before


def test_moving_the_ingress_gateway_in_one_file_moves_its_principal_and_tls_objects(repo_copy: Path):
    settings = repo_copy / "apps" / "base" / "ingress-gateway.env"
    identity = "gatewayName=public-gateway" if GATEWAY_API else "istioLabel=edge-gateway"
    service_account = "public-gateway-istio" if GATEWAY_API else "public-edge"
    settings.write_text(f"namespace=edge\nserviceAccount={service_account}\n{identity}\n")
    moved = layout.ingress_gateway(settings)
    docs = kustomize.build(repo_copy / "apps" / "overlays" / "dev")
    assert invariants.violations(docs, moved) == []
    principals = {
        principal
        for doc in docs
        if doc["kind"] == "AuthorizationPolicy"
        for rule in doc["spec"].get("rules", [])
        for src in rule.get("from", [])
        for principal in src["source"].get("principals", [])
    }
    assert f"cluster.local/ns/edge/sa/{service_account}" in principals
    assert not any("istio-system" in principal for principal in principals)
    gateway_objects = [doc for doc in docs if doc["apiVersion"].startswith(("cert-manager.io/", "gateway.networking"))]
    moved = {doc["metadata"]["namespace"] for doc in gateway_objects if doc["metadata"]["name"] != "public-routes"}
    assert moved == {"edge"}
    for kind, name in [
        ("Telemetry", "ingress-gateway-access-logs"),
        ("RequestAuthentication", "api-tokens"),
        ("AuthorizationPolicy", "api-requires-a-token"),
    ]:
        assert find(docs, kind, name)["metadata"]["namespace"] == "edge"
    if GATEWAY_API:
        assert find(docs, "HTTPRoute", "public-routes")["spec"]["parentRefs"][0]["namespace"] == "edge"


def test_the_gateways_tls_secret_is_the_one_the_certificate_writes(rendered):
    docs = rendered("dev")
    secret = next(doc for doc in docs if doc["kind"] == "Certificate" and not doc["spec"].get("isCA"))["spec"][
        "secretName"
    ]
    spec = the_gateway(docs)["spec"]
    used = (
        spec["listeners"][1]["tls"]["certificateRefs"][0]["name"]
        if GATEWAY_API
        else spec["servers"][1]["tls"]["credentialName"]
    )
    assert used == secret
