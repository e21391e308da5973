import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--e2e-args",
        action="append",
        default=[],
        help="an option for the baked repos' e2e suites, e.g. --e2e-args=--keep-cluster (repeatable)",
    )
