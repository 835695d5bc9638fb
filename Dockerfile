# syntax=docker/dockerfile:1
# The coordinator's image: `docker build -t infermine-server .` (fly.toml builds this file).
#
# Three stages: the web portal (npm), the server (cargo; the portal's files go inside the
# binary), and a small runtime holding the binary alone. The coordinator runs no models, so
# the image has no libtorch.

FROM node:20-bookworm-slim AS portal
WORKDIR /src/web-portal
COPY web-portal/package.json web-portal/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY web-portal/ ./
RUN npm run build

FROM rust:1.95-bookworm AS server
WORKDIR /src
COPY . .
COPY --from=portal /src/web-portal/dist web-portal/dist
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p infermine-server \
    && install -D -s target/release/infermine-server /out/infermine-server

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data infermine \
    && mkdir -p /data && chown infermine /data
COPY --from=server /out/infermine-server /usr/local/bin/infermine-server
USER infermine
WORKDIR /data
# PostgreSQL, S3 and the JWT secret come from the environment (on Fly.io: `fly secrets set
# INFERMINE_DATABASE_URL=… INFERMINE_JWT_SECRET=… INFERMINE_STORAGE_ENDPOINT=… …`). Without
# them the coordinator keeps SQLite and objects in /data, which suits a single machine only.
ENV INFERMINE_LISTEN=0.0.0.0:8080 \
    INFERMINE_DATA_DIR=/data \
    INFERMINE_LOG_FORMAT=json
EXPOSE 8080
# tini forwards SIGTERM, on which the coordinator drains (INFERMINE_DRAIN_TIMEOUT_S) and exits.
ENTRYPOINT ["tini", "--", "infermine-server"]
CMD ["serve"]
