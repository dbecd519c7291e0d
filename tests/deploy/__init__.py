"""tests.deploy package: the deploy/ configs, manifests and docs/deploy.md."""
