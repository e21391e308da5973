"""The end-to-end harness: a kind cluster with Istio installed from this repo, and the contract over real traffic.

Everything that needs no cluster (kind config, commands, TLS client, retries, scenarios, diagnostics
layout) is plain code with offline tests in tests/test_e2e_harness.py.
"""
