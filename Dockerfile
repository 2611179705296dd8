# Container image of the EPP daemon. Build: docker build -t epp:0.1.0 .
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY epp ./epp
COPY profiles ./profiles
RUN pip install --no-cache-dir . && useradd --uid 65532 --no-create-home epp
USER 65532
EXPOSE 9002 9003 9090
ENTRYPOINT ["epp"]
