"""Kubernetes backend: pure rendering (render.py, options.py, pss.py) and the API side
(client.py, backend.py). Importing this package imports neither the client library nor torch."""
