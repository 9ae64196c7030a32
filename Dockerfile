# Image for the worker and the server (docker-compose.yml). Not used on the development machines.

# The server's native front end (server/native): a wheel built with Rust, installed below.
FROM rust:1-slim-bookworm AS front
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && python3 -m venv /build && /build/bin/pip install --no-cache-dir "maturin>=1.7,<2"
COPY server/native /front
RUN /build/bin/maturin build --release --manifest-path /front/Cargo.toml --out /wheels

FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY graphdb graphdb
COPY workers workers
COPY server server
COPY proto proto
COPY cli cli
COPY bench bench
COPY --from=front /wheels /wheels
RUN pip install --no-cache-dir -e . /wheels/*.whl && python -m proto.generate
