# ringmq in a container: a Rust builder stage, then a small Debian runtime with the binary, the
# .deb's /etc/ringmq/ringmq.toml, /var/lib/ringmq (a volume) and a non-root user. The steps
# themselves are packaging/docker-build-steps.sh, which the tests run outside Docker.
#
#   docker build -t ringmq .
#   docker run -p 1883:1883 -v ringmq-data:/var/lib/ringmq ringmq
#
# io_uring and seccomp: Docker's default seccomp profile blocks the io_uring system calls. With
# the default broker.driver = "auto" ringmq then runs on its epoll driver and logs that it fell
# back. For io_uring, run with `--security-opt seccomp=unconfined` (or a profile that allows
# io_uring_setup, io_uring_enter and io_uring_register); to choose epoll outright and skip the
# probe, `-e RINGMQ_BROKER__DRIVER=epoll`.
#
# The admin API (ringmq ctl, /metrics) listens on the container's loopback; to publish port
# 18083, give it a token: `-e RINGMQ_ADMIN__BIND=0.0.0.0:18083 -e RINGMQ_ADMIN__TOKEN=...`.
# Listeners on 8883 (TLS) and 8083 (WebSocket) are declared in a config file of your own,
# mounted over /etc/ringmq/ringmq.toml.

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
RUN bash packaging/docker-build-steps.sh build /src /stage

FROM debian:bookworm-slim
COPY --from=builder /stage/ /
COPY packaging/docker-build-steps.sh /usr/local/lib/ringmq/docker-build-steps.sh
RUN bash /usr/local/lib/ringmq/docker-build-steps.sh runtime /
# Logs go to stderr (docker logs) instead of the package's /var/log/ringmq; mimalloc's settings
# are set here so that the broker need not re-execute itself to set them.
ENV RINGMQ_LOG__OUTPUT=stderr \
    MIMALLOC_ARENA_EAGER_COMMIT=0 \
    MIMALLOC_PURGE_DELAY=0
USER ringmq
WORKDIR /var/lib/ringmq
VOLUME ["/var/lib/ringmq"]
EXPOSE 1883 8883 8083 18083
HEALTHCHECK --interval=30s --timeout=5s CMD ["/usr/bin/ringmq", "ping"]
# An installed ringmq reads /etc/ringmq/ringmq.toml when no -c is given.
ENTRYPOINT ["/usr/bin/ringmq"]
CMD ["run"]
