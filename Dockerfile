# baton's container image: baton as PID 1, your server as its worker.
# See docs/containers.md. Build with `docker build -t baton .` (or podman).
#
# Add your server in an image of your own:
#   FROM baton
#   COPY --from=app-build /out/server /app/server
#   CMD ["run", "--listen", "http=:8080", "--ready", "notify", "--", "/app/server"]

# Debian release of both stages: the binary needs the glibc it was built on.
ARG DEBIAN=trixie
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-${DEBIAN} AS builder
WORKDIR /src
# The whole workspace: cargo reads every member's manifest, even to build
# one package. .dockerignore keeps target/ and .git/ out.
COPY . .
RUN cargo build --release --locked -p baton \
    && install -m 0755 target/release/baton /usr/local/bin/baton

# debian-slim rather than distroless: workers and `--build` steps often need
# /bin/sh, and a preStop hook may `sleep`.
FROM debian:${DEBIAN}-slim
COPY --from=builder /usr/local/bin/baton /usr/local/bin/baton
# A user for the workers (`BATON_USER=app` when baton runs as root), or
# for the whole container (`--user 10001`, `runAsUser: 10001`).
RUN useradd --system --uid 10001 --user-group --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin app
# TERM drains every generation and exits 0: give the container more time
# than --drain-timeout (docker stop -t, terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
# baton answers on its control socket from its event loop.
HEALTHCHECK --interval=30s --timeout=5s CMD ["baton", "ctl", "status"]
# Exec form: baton itself is PID 1, reaping orphans and taking the signals.
ENTRYPOINT ["/usr/local/bin/baton"]
CMD ["--help"]
