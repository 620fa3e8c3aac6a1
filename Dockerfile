# lethe's container image: the three binaries, static, in a base image without a shell.
#
#   docker build -t REGISTRY/lethe:TAG .
#
# The binaries are /usr/bin/lethe, /usr/bin/lethe-proxy and /usr/bin/lethe-rewriter; the Kubernetes
# manifests in deploy/kubernetes name the one each container runs. Nothing is fetched at run time.

FROM golang:1.26.8-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# TARGETOS and TARGETARCH are set by BuildKit for multi-platform builds; empty means the builder's.
ARG TARGETOS
ARG TARGETARCH
RUN CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} go build -ldflags='-s -w' -o /out/ \
    ./cmd/lethe ./cmd/lethe-proxy ./cmd/lethe-rewriter

# distroless/static holds CA certificates (for S3, GCS, Azure over TLS), time zones and
# /etc/passwd, and nothing else: no shell, no package manager.
FROM gcr.io/distroless/static-debian12
COPY --from=build /out/lethe /out/lethe-proxy /out/lethe-rewriter /usr/bin/
# nobody:nogroup, numeric, so that runAsNonRoot can verify it without a passwd look-up.
USER 65534:65534
EXPOSE 9095
ENTRYPOINT ["/usr/bin/lethe-proxy"]
