# gpu-tconv for CUDA machines: `docker build -t gpu-tconv .`, then
# `docker run --rm --gpus all gpu-tconv` (prints `gpu-tconv info`). See the README.
#
# The CUDA major version of the base image must match the CuPy wheel below
# (cupy-cuda13x through the package's "cuda" extra). The host needs an NVIDIA driver
# for CUDA 13 and the NVIDIA Container Toolkit; the driver itself comes from the host.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

ARG DEBIAN_FRONTEND=noninteractive
# Not pinned to versions (see .hadolint.yaml): the base image's tag pins the release.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*

# A virtual environment: Ubuntu 24.04 refuses pip installs into the system Python.
ENV VIRTUAL_ENV=/opt/gpu-tconv \
    PATH=/opt/gpu-tconv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv "$VIRTUAL_ENV"

# The package from the build context (see .dockerignore), with the "cuda" extra:
# CuPy, NVRTC (the run-time compiler of the kernel) and the CUDA headers it includes.
COPY . /tmp/gpu-tconv
RUN pip install "/tmp/gpu-tconv[cuda]" \
 && rm -rf /tmp/gpu-tconv \
 && gpu-tconv --version && python -c "import cupy, PIL, tqdm"

# Not root, and by number: a host (or Kubernetes' runAsNonRoot) can check a numeric
# user without the image's /etc/passwd. Compiled kernels are cached under /tmp, so the
# image also works with `--user "$(id -u):$(id -g)"` (writing into a mounted folder as
# oneself).
RUN groupadd --gid 10001 tconv \
 && useradd --create-home --shell /usr/sbin/nologin --uid 10001 --gid 10001 tconv \
 && mkdir /data && chown 10001:10001 /data
ENV CUPY_CACHE_DIR=/tmp/cupy-kernel-cache \
    GPU_TCONV_CACHE_DIR=/tmp/gpu-tconv-cache
USER 10001:10001
WORKDIR /data

ENTRYPOINT ["gpu-tconv"]
CMD ["info"]
