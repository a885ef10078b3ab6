# One image for every streamrec service (streaming worker, trainer, serving, replay): the CPU variant.
#   docker build -t streamrec .          (docker compose builds it for you: `docker compose up --build`)
# torch comes from PyTorch's CPU wheel index (the PyPI Linux wheel pulls ~2 GB of CUDA libraries); the rest is
# pinned in requirements/*.txt exactly as deploy/setup.sh installs it (torchrec without deps: it names the CUDA
# fbgemm-gpu, we use fbgemm-gpu-cpu). For a GPU image build from an NVIDIA CUDA base with requirements/torch-gpu.txt.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCHREC_VERSION=1.9.2

WORKDIR /app

# Dependencies first (cached layer while only the code changes).
COPY requirements/ requirements/
RUN pip install --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple -r requirements/torch-cpu.txt \
 && pip install --no-deps "torchrec==${TORCHREC_VERSION}" \
 && pip install -r requirements/base.txt

COPY pyproject.toml README.md ./
COPY streaming/ streaming/
COPY model/ model/
COPY trainer/ trainer/
COPY serving/ serving/
COPY kernels/ kernels/
COPY deploy/ deploy/
COPY benchmarks/ benchmarks/
RUN pip install --no-deps -e . \
 && useradd --create-home --uid 10001 streamrec \
 && mkdir -p /app/runs /app/.cache/data \
 && chown -R streamrec:streamrec /app/runs /app/.cache

USER streamrec
# Each compose service sets its own command; the default prints the entry points.
CMD ["python", "-m", "streaming", "--help"]
