# syntax=docker/dockerfile:1
# The handler as a container (Azure Container Apps, App Service for containers, any OCI runtime):
# the same binary and router as the Functions app, listening on 0.0.0.0:8080.
#
#   docker build -t smartcache .
#   docker run -p 8080:8080 -e DATABASE_URL=postgres://… -e REDIS_URL=redis://… smartcache

# ---- build: the release binary, dependencies cached in their own layer --------------------------
FROM rust:1.95-slim-bookworm AS build
# No .git in the build context: /api/version reports this instead (docker build --build-arg).
ARG GIT_COMMIT=unknown
ENV GIT_COMMIT=${GIT_COMMIT}
WORKDIR /src
# Only the manifests first: the dependency layer is rebuilt when they change, not on every edit.
COPY Cargo.toml Cargo.lock ./
COPY handler/Cargo.toml handler/build.rs handler/
RUN mkdir -p handler/src && echo 'fn main() {}' > handler/src/main.rs && touch handler/src/lib.rs \
    && cargo build --release --locked -p handler \
    && rm -rf handler/src target/release/.fingerprint/handler-* target/release/deps/handler-* target/release/deps/libhandler-*
COPY handler handler
RUN cargo build --release --locked -p handler && strip target/release/handler

# ---- run: glibc and CA certificates only, as an unprivileged user ------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot
WORKDIR /app
COPY --from=build /src/target/release/handler /app/handler
COPY datasets/*.toml /app/datasets/
ENV BIND_ADDRESS=0.0.0.0 \
    PORT=8080 \
    DATASETS_DIR=/app/datasets \
    DATABASE_URL=sqlite:///tmp/smartcache.db
EXPOSE 8080
USER nonroot:nonroot
HEALTHCHECK NONE
ENTRYPOINT ["/app/handler"]
CMD ["serve"]
