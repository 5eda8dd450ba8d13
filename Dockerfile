# Dockerfile: the ferry image that examples/deploy/kubernetes/statefulset.yaml runs.
#
# Build stage: a release build of the ferry binary (no test-only features).
# Runtime stage: debian:bookworm-slim with CA certificates, a non-root user
# (uid/gid 10001, as the StatefulSet's securityContext) and /var/lib/ferry,
# the data directory, as a volume. tests/deploy_files.rs checks that the
# StatefulSet agrees with this file.
FROM rust:1.86-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin ferry

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 ferry \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/ferry --no-create-home ferry \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/ferry
COPY --from=build /src/target/release/ferry /usr/local/bin/ferry
USER 10001:10001
VOLUME ["/var/lib/ferry"]
EXPOSE 9464 9465
ENTRYPOINT ["/usr/local/bin/ferry"]
CMD ["run", "--config", "/etc/ferry/ferry.toml"]
