# Multi-stage image for the realign engine CLI. The service (api, worker) joins it in a later issue.
# CPU torch by default; for GPUs build with --build-arg TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>".
FROM python:3.11-slim AS build
ARG TORCH_SPEC="torch==2.13.0"
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --no-cache-dir --upgrade pip && pip install --no-cache-dir ${TORCH_SPEC}
COPY pyproject.toml README.md ./
COPY trace_engine ./trace_engine
COPY api ./api
COPY worker ./worker
RUN pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 realign
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    REALIGN_DATA_DIR=/data \
    HF_HUB_DISABLE_TELEMETRY=1
RUN mkdir -p /data && chown realign /data
USER realign
WORKDIR /home/realign
ENTRYPOINT ["realign"]
CMD ["--help"]
