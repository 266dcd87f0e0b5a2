# syntax=docker/dockerfile:1
# One image: the relay (release build) serving the web app (trunk build) and its WebSockets on one port.
#   docker build -t soundline-relay .
#   docker run -p 8080:8080 -e SOUNDLINE_KAFKA_BROKERS=kafka:9092 soundline-relay

# --- build: Rust 1.95 with the wasm target, trunk and the wasm-bindgen-cli that Cargo.lock pins ---------------
FROM rust:1.95-bookworm AS build
RUN rustup target add wasm32-unknown-unknown \
 && cargo install --locked trunk --version 0.21.14 \
 && cargo install wasm-bindgen-cli --version 0.2.130
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p soundline-relay \
 && trunk build --release --locked

# --- run: distroless (glibc, CA roots, no shell), non-root ------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/soundline-relay /usr/local/bin/soundline-relay
COPY --from=build /src/dist /srv/soundline
ENV SOUNDLINE_LISTEN=0.0.0.0:8080 \
    SOUNDLINE_STATIC_DIR=/srv/soundline
EXPOSE 8080
USER 65532:65532
# No curl in distroless: the relay checks itself.
HEALTHCHECK --interval=10s --timeout=4s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/soundline-relay", "healthcheck", "--addr", "127.0.0.1:8080"]
# SIGTERM: stop accepting, deliver acks of what Kafka has, close recorders with 1001, exit 0 (shutdown_timeout_s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/soundline-relay"]
CMD ["serve"]
