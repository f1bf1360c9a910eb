# tagclip-studio: the ML backend (`tagclip serve`) and the GPU worker (`tagclip worker`) in one image.
# PyPI's Linux torch wheels carry CUDA; the NVIDIA driver comes from the host (nvidia container runtime).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TAGCLIP_CACHE_DIR=/data/cache

RUN apt-get update \
    && apt-get install -y --no-install-recommends libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY . /app
RUN pip install ".[server,export]" \
    && useradd --create-home --uid 1000 tagclip \
    && mkdir -p /data/cache && chown tagclip /data/cache

USER tagclip
EXPOSE 9090
CMD ["tagclip", "serve"]
