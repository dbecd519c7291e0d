"""overcommit-sim services: guest and host core models, transport, orchestration."""
