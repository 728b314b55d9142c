# One image for the ML backend and the RQ worker; docker-compose.yml picks the command per service.
# The torch wheel from PyPI carries CUDA: the worker uses the GPU when the container is given one.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SHOESEG_MODEL_DIR=/models \
    SHOESEG_CACHE_DIR=/cache

WORKDIR /app
COPY pyproject.toml README.md ./
COPY via_tools ./via_tools
COPY shoeseg ./shoeseg
COPY backend ./backend
COPY worker ./worker
COPY shoeseg_app ./shoeseg_app
RUN pip install '.[onnx]' \
 && useradd --create-home --uid 1000 shoeseg \
 && mkdir -p /models /cache \
 && chown shoeseg:shoeseg /models /cache
COPY docker/healthcheck.py /usr/local/bin/shoeseg-healthcheck

USER shoeseg
EXPOSE 9090
CMD ["shoeseg", "serve", "--host", "0.0.0.0", "--port", "9090"]
