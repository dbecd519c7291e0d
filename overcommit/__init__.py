"""Generated wire protocol of overcommit-sim (see protos/)."""
