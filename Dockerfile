# Container image of the EPP daemon.
# Build: docker build --build-arg EPP_COMMIT=$(git rev-parse --short HEAD) -t epp:0.1.0 .
FROM python:3.11-slim
ARG EPP_COMMIT=unknown
# reported as inference_extension_info{commit=...}
ENV EPP_COMMIT=${EPP_COMMIT}
WORKDIR /app
COPY pyproject.toml README.md ./
COPY epp ./epp
COPY profiles ./profiles
# the daemon never imports the tools (simulator, load generator, demo, benchmarks): the image leaves them out
# xds-protos bundles an old copy of the opentelemetry.proto modules: opentelemetry-proto's own must win
RUN rm -rf epp/tools && pip install --no-cache-dir . \
    && pip install --no-cache-dir --force-reinstall --no-deps \
       "opentelemetry-proto==$(python -c 'from importlib.metadata import version; print(version("opentelemetry-proto"))')" \
    && useradd --uid 65532 --no-create-home epp
USER 65532
EXPOSE 9002 9003 9090
ENTRYPOINT ["epp"]
