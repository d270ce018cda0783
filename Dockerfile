# Belay, embedded default: one node, SQLite under /data.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin belay

FROM debian:bookworm-slim
COPY --from=build /src/target/release/belay /usr/local/bin/belay
ENV BELAY__SERVER__HOST=0.0.0.0 \
    BELAY__DATABASE__URL=sqlite:///data/belay.db \
    BELAY__AUTH__DEV_SECRETS_FILE=/data/dev-secrets.json
VOLUME /data
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/belay"]
