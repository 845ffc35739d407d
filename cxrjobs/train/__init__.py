"""The one training loop, its spec, distributed set-up, metrics and checkpoints."""
