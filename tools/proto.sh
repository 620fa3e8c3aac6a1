#!/usr/bin/env bash
# Regenerates lethe's Go code for Thanos' gRPC StoreAPI (internal/storepb) from the copies of
# Thanos' .proto files under internal/storepb/proto (thanos v0.42.5, gogoproto options stripped:
# they change the Go code Thanos generates, not the bytes on the wire).
#
# Needs protoc (Debian: apt-get install -y protobuf-compiler, which also ships
# google/protobuf/any.proto). The protoc plugins are installed at the pinned versions below from
# the Go module proxy into a cache under $HOME/.cache/lethe/bin.
set -euo pipefail

protoc_gen_go_version=v1.36.12
protoc_gen_go_grpc_version=v1.6.2

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${LETHE_CACHE:-$HOME/.cache/lethe}/bin/protoc-plugins-go-${protoc_gen_go_version}-grpc-${protoc_gen_go_grpc_version}"
if [ ! -x "$bin/protoc-gen-go" ] || [ ! -x "$bin/protoc-gen-go-grpc" ]; then
  mkdir -p "$bin"
  GOBIN="$bin" go install "google.golang.org/protobuf/cmd/protoc-gen-go@${protoc_gen_go_version}"
  GOBIN="$bin" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@${protoc_gen_go_grpc_version}"
fi
command -v protoc >/dev/null || {
  echo "tools/proto.sh: protoc not found (Debian: apt-get install -y protobuf-compiler)" >&2
  exit 1
}

module=github.com/lethe-project/lethe
pkg=$module/internal/storepb
# Each proto file's Go package: Thanos' layout, below internal/storepb.
mappings=(
  "store/labelpb/types.proto=$pkg/labelpb"
  "store/storepb/types.proto=$pkg"
  "store/storepb/rpc.proto=$pkg"
  "store/storepb/prompb/types.proto=$pkg/prompb"
  "info/infopb/rpc.proto=$pkg/infopb"
)
go_opts=(--go_opt=module=$module --go-grpc_opt=module=$module)
for m in "${mappings[@]}"; do
  go_opts+=(--go_opt=M"$m" --go-grpc_opt=M"$m")
done

cd "$root/internal/storepb/proto"
PATH="$bin:$PATH" protoc -I . \
  --go_out="$root" --go-grpc_out="$root" "${go_opts[@]}" \
  "${mappings[@]%%=*}"
