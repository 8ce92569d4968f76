"""Test support shared by the test modules: the session stack, synthetic data, service helpers."""
