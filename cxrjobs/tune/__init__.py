"""Hyper-parameter search with Ray Tune over the one training loop."""
