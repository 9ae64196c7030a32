# Image for the worker and the server (docker-compose.yml). Not used on the development machines.

# The server's native front end (server/native): a wheel built with Rust, installed below.
FROM rust:1-slim-bookworm AS front
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && python3 -m venv /build && /build/bin/pip install --no-cache-dir "maturin>=1.7,<2"
COPY server/native /front
RUN /build/bin/maturin build --release --manifest-path /front/Cargo.toml --out /wheels

# torch: the CPU-only wheels are published on download.pytorch.org, not on PyPI, and nothing here may download
# from outside the package registries; so every image (worker, scheduler, server, migrate) takes PyPI's torch,
# whose Linux x86_64 wheel is built with CUDA and pulls the nvidia-* runtime wheels (a few GB). The server and the
# scheduler never import torch (it is a dependency of the package they share with the worker): it costs image
# size, not memory or start-up. Decision and alternative (a private mirror of the CPU index): docs/operations.md.
FROM python:3.11-slim
WORKDIR /app
# A fixed non-root user (uid/gid 10001, `user:` in docker-compose.yml); it owns only what the processes write.
RUN groupadd --system --gid 10001 app && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home app
COPY pyproject.toml README.md ./
COPY graphdb graphdb
COPY workers workers
COPY ml ml
COPY server server
COPY proto proto
COPY cli cli
COPY bench bench
COPY --from=front /wheels /wheels
RUN pip install --no-cache-dir -e . /wheels/*.whl && python -m proto.generate
# Model checkpoints, index snapshots and the text cache (named volumes take this ownership when first mounted).
RUN mkdir -p /app/models /app/var/index /app/var/text-cache && chown -R app:app /app/models /app/var
USER 10001:10001
