"""Chaos tests share no fixtures here on purpose: each test module imports its own
(the worker-crash tests from ``crash_fixtures``), so that the modules stay independent."""
