"""The API needs a valid JWT at the gateway: each mistake a change could make to that is caught by the contract
row it breaks."""

import pytest
from conftest import ROWS, broken_rows, find, row_named

pytestmark = pytest.mark.gitops_tool_independent


def token_policy(docs: list[dict]) -> dict:
    return find(docs, "AuthorizationPolicy", "api-requires-a-token")


VALID_TOKEN_ROW = row_named("/orders reaches the backend")
NO_TOKEN_ROW = row_named("without a token is refused")
# The same request, as the gateway normalizes other spellings of its path.
NO_TOKEN_ROWS = {row.name for row in ROWS if row.caller == "internet" and row.expected == "denied"}


def test_a_token_rule_that_misses_the_api_paths_lets_requests_without_a_token_through(rendered):
    docs = rendered("prod")
    token_policy(docs)["spec"]["rules"][0]["to"][0]["operation"]["paths"] = ["/admin", "/admin/*"]
    broken = broken_rows(docs, "prod")
    assert NO_TOKEN_ROW in NO_TOKEN_ROWS and set(broken) == NO_TOKEN_ROWS
    assert "expected denied, got reaches" in broken[NO_TOKEN_ROW].line()


def test_a_rule_that_refuses_token_holders_instead_is_caught(rendered):
    docs = rendered("prod")
    source = token_policy(docs)["spec"]["rules"][0]["from"][0]["source"]
    source["requestPrincipals"] = source.pop("notRequestPrincipals")
    broken = broken_rows(docs, "prod")
    assert NO_TOKEN_ROW in broken and VALID_TOKEN_ROW in broken
    assert "denied by AuthorizationPolicy" in broken[VALID_TOKEN_ROW].line()


def test_a_rule_without_its_request_principal_condition_refuses_every_api_request(rendered):
    docs = rendered("prod")
    token_policy(docs)["spec"]["rules"][0].pop("from")
    broken = broken_rows(docs, "prod")
    assert VALID_TOKEN_ROW in broken and NO_TOKEN_ROW not in broken


def test_keys_read_from_another_issuers_jwks_refuse_every_valid_token(rendered):
    docs = rendered("prod")
    rule = find(docs, "RequestAuthentication", "api-tokens")["spec"]["jwtRules"][0]
    rule["jwksUri"] = "https://elsewhere.example.org/.well-known/jwks.json"
    broken = broken_rows(docs, "prod")
    assert VALID_TOKEN_ROW in broken
    assert "holds no key that signed the token: 401" in broken[VALID_TOKEN_ROW].line()
    assert row_named("without a token") not in broken


def test_without_the_request_authentication_no_token_is_valid(rendered):
    docs = [doc for doc in rendered("prod") if doc["kind"] != "RequestAuthentication"]
    broken = broken_rows(docs, "prod")
    assert VALID_TOKEN_ROW in broken and row_named("expired token") in broken


def test_the_frontend_needs_no_token_and_plain_http_is_still_redirected(rendered):
    docs = rendered("prod")
    holding = {name for name in (row.name for row in ROWS)} - set(broken_rows(docs, "prod"))
    assert "the home page reaches the frontend" in holding
    assert "plain HTTP is redirected to HTTPS" in holding
    token_policy(docs)["spec"]["rules"][0]["to"][0]["operation"].pop("ports")
    assert set(broken_rows(docs, "prod")) == {"plain HTTP is redirected to HTTPS"}
