"""services.sim package."""
