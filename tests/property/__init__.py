"""tests.property package."""
