# Image for the worker and the server (docker-compose.yml). Not used on the development machines.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY graphdb graphdb
COPY workers workers
COPY server server
COPY proto proto
COPY cli cli
COPY bench bench
RUN pip install --no-cache-dir -e . && python -m proto.generate
