"""Generated code for protos/overcommit/v1; run `make proto` to refresh."""
