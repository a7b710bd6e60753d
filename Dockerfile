# Operator image: `docker build -t bulwark:dev .` (needs a Docker engine; see README).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p bulwark --bin bulwark

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/bulwark /usr/local/bin/bulwark
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/bulwark"]
CMD ["run"]
