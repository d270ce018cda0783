# Belay: a build stage, then a small runtime image that runs as an unprivileged user.
# Embedded default (one node, SQLite under /data) unless BELAY__DATABASE__URL and
# BELAY__REDIS__URL say otherwise (docker-compose.yml runs the cluster).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin belay \
    && strip target/release/belay

FROM debian:bookworm-slim
# ca-certificates: push providers and database servers over TLS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin belay \
    && mkdir -p /data && chown belay:belay /data
COPY --from=build /src/target/release/belay /usr/local/bin/belay
COPY config /etc/belay
ENV BELAY__SERVER__HOST=0.0.0.0 \
    BELAY__DATABASE__URL=sqlite:///data/belay.db \
    BELAY__AUTH__DEV_SECRETS_FILE=/data/dev-secrets.json
USER belay
WORKDIR /data
VOLUME /data
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/belay"]
