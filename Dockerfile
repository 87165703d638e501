# Multi-stage image for the whole project: the engine CLI, the API (uvicorn) and the Celery workers.
# CPU torch by default; GPU workers: build with --build-arg TORCH_SPEC="torch==2.13.0 --index-url <CUDA wheel index>".
# The source lives in /app (installed editable) so Alembic migrations and examples ship with the code.
FROM python:3.11-slim AS build
ARG TORCH_SPEC="torch==2.13.0"
WORKDIR /app
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --no-cache-dir --upgrade pip && pip install --no-cache-dir ${TORCH_SPEC}
COPY pyproject.toml README.md ./
COPY trace_engine ./trace_engine
COPY api ./api
COPY worker ./worker
COPY migrations ./migrations
COPY examples ./examples
RUN pip install --no-cache-dir -e .

FROM python:3.11-slim AS runtime
# GPU workers: INSTALL_CC=1 adds the C compiler torch.compile/Triton need for the fused kernels (without it the
# engine's self-check falls back to eager kernels with a warning)
ARG INSTALL_CC=0
RUN if [ "$INSTALL_CC" = "1" ]; then apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*; fi
RUN useradd --create-home --uid 10001 realign
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    REALIGN_DATA_DIR=/data \
    REALIGN_CACHE_DIR=/data/cache \
    HF_HOME=/data/hf \
    HF_HUB_DISABLE_TELEMETRY=1
RUN mkdir -p /data && chown realign /data
USER realign
WORKDIR /app
EXPOSE 8000
ENTRYPOINT ["realign"]
CMD ["--help"]
