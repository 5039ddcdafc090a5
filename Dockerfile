# cdpgate: build with the pinned toolchain, run on Debian slim with Debian's Chromium, as an
# unprivileged user so that Chrome's sandbox is on. docs/deploy.md says how to run it (and
# what was not run: no container engine was at hand where this file was written).

FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin cdpgate

FROM debian:bookworm-slim
COPY deploy/docker/runtime-setup.sh /usr/local/lib/cdpgate/runtime-setup.sh
RUN /usr/local/lib/cdpgate/runtime-setup.sh /var/lib/cdpgate /var/lib/cdpgate-profiles
COPY --from=build /src/target/release/cdpgate /usr/local/bin/cdpgate
COPY config.toml /etc/cdpgate/config.toml
# Every setting can be changed with a CDPGATE_* variable (docs/deploy.md).
ENV CDPGATE_LISTEN=0.0.0.0:3000 \
    CDPGATE_DATA_DIR=/var/lib/cdpgate \
    CDPGATE_LOG_FORMAT=json
USER cdpgate
WORKDIR /var/lib/cdpgate
VOLUME /var/lib/cdpgate
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
  CMD curl -fsS http://127.0.0.1:3000/ready || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/cdpgate", "/etc/cdpgate/config.toml"]
