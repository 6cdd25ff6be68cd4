# The operator's image: both binaries (`flashsale-operator`, and `flashsale-drain-agent`, which the
# drain-agent DaemonSet runs) on a minimal glibc runtime with CA certificates, as the non-root user
# 65532, with no shell. `make image` assembles the same runtime here without a container daemon
# (see scripts/image.sh); its layer holds the same files this runtime stage has.
#
#   docker build -t registry.example.com/flashsale-operator:0.1.0 .

FROM docker.io/library/rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY tests ./tests
RUN cargo build --release --locked --bins

# distroless/cc: glibc, libgcc, CA certificates, /etc/passwd with nonroot (65532); no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/flashsale-operator /src/target/release/flashsale-drain-agent /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/flashsale-operator"]
CMD ["run"]
