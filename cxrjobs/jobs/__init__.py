"""Job specs (what to run, how many replicas) and the entrypoint every replica runs."""
