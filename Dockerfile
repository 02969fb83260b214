# jobhost: the host binary and the example plugins, built from source.
#   docker build -t jobhost .
#   docker run -p 8080:8080 -e JOBHOST_ADMIN_TOKEN=... jobhost
# With no JOBHOST_DATABASE_URL it runs on the embedded SQLite store under
# /var/lib/jobhost; docker-compose.yml runs two hosts on PostgreSQL.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# The plugins are WebAssembly components; `cargo xtask plugins` would add
# the target itself, done here once so the layer is cached.
RUN rustup target add wasm32-wasip2
COPY . .
RUN cargo xtask plugins \
 && cargo build --release --locked --package jobhost

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /var/lib/jobhost jobhost
COPY --from=build /src/target/release/jobhost /usr/local/bin/jobhost
# Where a named volume mounted at /plugins is filled from on first use.
COPY --from=build --chown=jobhost /src/target/jobhost-plugins/examples /plugins
USER jobhost
WORKDIR /var/lib/jobhost
ENV JOBHOST_LISTEN=0.0.0.0:8080 \
    JOBHOST_DATA_DIR=/var/lib/jobhost \
    JOBHOST_PLUGINS=/plugins
EXPOSE 8080
ENTRYPOINT ["jobhost"]
CMD ["serve"]
