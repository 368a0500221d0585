"""Shared test suites that each backend's ``test_*`` module subclasses (fsspec-style): the
suites live here, outside ``test_*`` modules, so importing one never runs it twice."""
