# One image for every job kind (preprocess, train): the entrypoint reads the job from the store.
# Build from the repository root:  docker build -f images/cxrjobs.Dockerfile -t cxrjobs:dev .
# (Built and exercised with the Kubernetes backend; this machine cannot pull base images.)
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/cxrjobs
# torch first: the largest, least often changed layer.
ARG TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"
RUN pip install ${TORCH_SPEC}
COPY pyproject.toml README.md ./
COPY cxrjobs ./cxrjobs
RUN pip install . && useradd --uid 1000 --create-home cxr
USER 1000
ENTRYPOINT ["python", "-m", "cxrjobs.jobs.entrypoint"]
