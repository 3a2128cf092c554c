#!/usr/bin/env bash
# The Dockerfile's build steps, kept in a script so that tests run them where `docker build`
# cannot run (tests/packaging/test_packaging.py). Two steps:
#   build SRC STAGE   compile the release binary in SRC and lay out what the runtime image gets
#                     under STAGE: usr/bin/ringmq and etc/ringmq/ringmq.toml (the .deb's
#                     config). RINGMQ_PREBUILT names an already built binary to take instead of
#                     compiling (the tests do: tests/run.sh has built it already).
#   runtime ROOT      in the runtime image (ROOT=/): the ringmq system user, and /var/lib/ringmq
#                     and /var/log/ringmq owned by it. For another ROOT (a test, not root) the
#                     directories are made and the user is not.
set -euo pipefail

usage="usage: docker-build-steps.sh build SRC STAGE | runtime ROOT"
case "${1:-}" in
  build)
    src="${2:?$usage}"
    stage="${3:?$usage}"
    if [ -n "${RINGMQ_PREBUILT:-}" ]; then
      bin="$RINGMQ_PREBUILT"
    else
      cargo build --release --locked --bin ringmq --manifest-path "$src/Cargo.toml"
      bin="$src/target/release/ringmq"
    fi
    install -D -m 0755 "$bin" "$stage/usr/bin/ringmq"
    if command -v strip >/dev/null; then
      strip --strip-debug "$stage/usr/bin/ringmq"
    fi
    install -D -m 0644 "$src/packaging/ringmq.toml" "$stage/etc/ringmq/ringmq.toml"
    # The staged binary runs and the staged config is valid.
    "$stage/usr/bin/ringmq" check-config --config "$stage/etc/ringmq/ringmq.toml"
    ;;
  runtime)
    root="${2:?$usage}"
    owner=()
    if [ "$root" = / ]; then
      if ! getent passwd ringmq >/dev/null; then
        useradd --system --user-group --home-dir /var/lib/ringmq --no-create-home \
          --shell /usr/sbin/nologin ringmq
      fi
      owner=(-o ringmq -g ringmq)
    else
      echo "docker-build-steps.sh: ROOT is $root, not /: the ringmq user is not created" >&2
    fi
    install -d -m 0750 "${owner[@]}" "$root/var/lib/ringmq" "$root/var/log/ringmq"
    ;;
  *)
    echo "$usage" >&2
    exit 2
    ;;
esac
