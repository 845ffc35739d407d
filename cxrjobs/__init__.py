"""cxrjobs: chest X-ray training and evaluation as batch jobs (local processes or Kubernetes)."""

__version__ = "0.1.0"
