"""tests.contract package."""
