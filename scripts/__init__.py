"""Developer scripts (code generators); ``scripts.dashboards`` is imported by the tests."""
