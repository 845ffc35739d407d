"""Specs: what a job asks for, validated by pydantic. Leaf modules: no torch, pandas or Pillow,
so the CLI, the local supervisor and the manifest renderers import nothing heavy."""
