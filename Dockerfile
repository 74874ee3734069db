# Every executable of the Quicksilver migration toolkit in one image.
#
#   docker build -t qs .                          # compile in the Swift image, run on Debian slim
#   docker run --rm qs qsnode --help
#
# Build arguments:
#   SWIFT_IMAGE    the Swift toolchain image of the build stage
#   RUNTIME_IMAGE  the Debian bookworm image of the runtime stage
#   BUILDER        "source" (default) compiles in SWIFT_IMAGE; "host" takes executables
#                  already built and staged in the build context's staging/ directory by
#                  scripts/stage-runtime.sh (what scripts/container-test.sh does), so the
#                  runtime stage is the same either way. podman 4 (buildah) needs
#                  BUILDER spelled out even for the default: --build-arg BUILDER=source.
#   EXECUTABLES    the products built and shipped: adding an executable is adding its name.
#
# The runtime stage runs as the non-root user qs (uid 10001) and works with a read-only
# root filesystem; /data is the volume of a node's store. docs/operations.md tells how to
# run it.

ARG SWIFT_IMAGE=docker.io/library/swift:6.3-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim
ARG BUILDER=source

# ---- build stage: compile every executable in release mode -------------------------------
FROM ${SWIFT_IMAGE} AS build-source
ARG EXECUTABLES="qsnode qsktbridge qsqsbridge qsrest qsctl fakekt qsbench"
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends liblmdb-dev librocksdb-dev libxxhash-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Package.swift Package.resolved* ./
RUN swift package resolve
COPY Sources ./Sources
# The manifest declares the test targets too: SwiftPM wants their folders present.
COPY Tests ./Tests
COPY scripts/stage-runtime.sh ./scripts/
COPY deploy/image ./deploy/image
# Without run-time exclusivity checks, as `make release` (docs/benchmarks.md).
RUN swift build -c release -Xswiftc -enforce-exclusivity=unchecked \
 && scripts/stage-runtime.sh "$(swift build -c release -Xswiftc -enforce-exclusivity=unchecked --show-bin-path)" /staging $EXECUTABLES

# ---- or take executables built on the host (BUILDER=host) -----------------------------------
FROM scratch AS build-host
COPY staging/ /staging/

FROM build-${BUILDER} AS build

# ---- runtime stage: Debian slim, the runtime libraries, the executables ---------------------
FROM ${RUNTIME_IMAGE}
# The Debian packages holding the libraries the executables load (liblmdb0, libcurl4, …),
# as found by scripts/stage-runtime.sh with ldd and dpkg.
COPY --from=build /staging/debian-packages /tmp/qs-debian-packages
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(cat /tmp/qs-debian-packages) \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /tmp/qs-debian-packages \
 && groupadd --gid 10001 qs \
 && useradd --uid 10001 --gid qs --home-dir /data --no-create-home --shell /usr/sbin/nologin qs \
 && mkdir -p /data \
 && chown qs:qs /data
COPY --from=build /staging/lib/ /usr/local/lib/qs/
RUN echo /usr/local/lib/qs > /etc/ld.so.conf.d/qs.conf && ldconfig
COPY --from=build /staging/bin/ /usr/local/bin/

# Defaults for containers (flags win over variables; docs/operations.md lists them all).
# Nothing listens beyond the container's loopback without a token: the admin port (health,
# readiness, metrics, and actions) is on 127.0.0.1, where the image's HEALTHCHECK reaches it;
# the write port stays on loopback (qsnode's own default). To open them to other containers
# and probes set QS_LISTEN=0.0.0.0:7400 with QS_WRITE_TOKEN_FILE and QS_REPLICATION_TOKEN_FILE,
# and QS_ADMIN=0.0.0.0:9400 with QS_ADMIN_TOKEN_FILE, as deploy/ does: a daemon refuses to
# start on a non-loopback address without its token.
ENV QS_LOG_FORMAT=json \
    QS_ADMIN=127.0.0.1:9400 \
    QS_DATA=/data
VOLUME /data
WORKDIR /data
USER 10001:10001
EXPOSE 7400 9400
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 CMD ["qs-healthcheck"]
CMD ["qsnode"]
