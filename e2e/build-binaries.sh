#!/usr/bin/env bash
# Builds the pinned upstream binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok, helm) from their Go modules with the machine's Go toolchain,
# into a version-keyed cache outside the repository. Already-built binaries are skipped, so a
# warm run costs nothing.
#
#   e2e/build-binaries.sh            # build whatever is missing
#   e2e/build-binaries.sh --print    # print the cache directory and exit
#   e2e/build-binaries.sh --peers    # also build the peers benchmarks compare with (external-dns, Sloth)
#
# Cache: $BULWARK_CACHE_DIR/bin (default ~/.cache/bulwark/bin); each file is named
# <binary>-<version>, which is where the Rust harness (e2e/src/binaries.rs) looks for it.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache=${BULWARK_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/bulwark}/bin
if [ "${1:-}" = "--print" ]; then echo "$cache"; exit 0; fi
mkdir -p "$cache"

# The checksum database is unreachable from this network; module zips still come from the proxy
# and are pinned by the generated go.sum. GOTOOLCHAIN=local: never download another Go.
# -mod=mod lets `go build` resolve the dependency graph of the throwaway module itself.
export GOSUMDB=off GOTOOLCHAIN=local GOFLAGS="-buildvcs=false -mod=mod" CGO_ENABLED=0

log() { printf '[build-binaries %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

have() { [ -x "$cache/$1-$2" ]; }

# Runs `go build` for $@ in a throwaway module whose go.mod is given on stdin, then moves
# each output into the cache. Arguments: version, then pairs of "binary=package".
build_in_module() {
  local version=$1; shift
  local work; work=$(mktemp -d)
  cat >"$work/go.mod"
  (
    cd "$work"
    for pair in "$@"; do
      local bin=${pair%%=*} pkg=${pair#*=}
      if have "$bin" "$version"; then continue; fi
      log "building $bin $version ($pkg); first build is slow on 2 cores"
      local start=$SECONDS
      go build -trimpath -ldflags "-s -w $LDFLAGS_EXTRA" -o "$work/$bin" "$pkg"
      mv "$work/$bin" "$cache/$bin-$version"
      log "built $bin in $((SECONDS - start))s"
    done
  )
  rm -rf "$work"
}

build_kubernetes() {
  local v=$KUBERNETES_VERSION staging=v0.${KUBERNETES_VERSION#v1.}
  local missing=0
  for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do have "$b" "$v" || missing=1; done
  [ "$missing" = 1 ] || { log "kubernetes $v: cached"; return; }
  log "kubernetes $v: fetching module metadata"
  local gomod; gomod=$(go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  # k8s.io/kubernetes replaces its staging modules with local paths, which do not exist in the
  # published module; point each at its published version (v0.X.Y for v1.X.Y).
  {
    echo "module bulwark.dev/k8s-binaries"
    echo "go $(go env GOVERSION | sed 's/^go//; s/^\([0-9]*\.[0-9]*\).*/\1/')"
    echo "require k8s.io/kubernetes $v"
    sed -n 's#^\s*\(k8s\.io/[a-z0-9-]*\) => ./staging/src/.*#replace \1 => \1 '"$staging"'#p' "$gomod"
  } | LDFLAGS_EXTRA="-X k8s.io/component-base/version.gitVersion=$v \
      -X k8s.io/component-base/version.gitMajor=1 \
      -X k8s.io/component-base/version.gitMinor=$(echo "$v" | cut -d. -f2) \
      -X k8s.io/component-base/version.gitTreeState=clean" \
    build_in_module "$v" \
      kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
      kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
      kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler \
      kubectl=k8s.io/kubernetes/cmd/kubectl
}

build_simple() { # binary module package version
  local bin=$1 module=$2 pkg=$3 v=$4
  if have "$bin" "$v"; then log "$bin $v: cached"; return; fi
  printf 'module bulwark.dev/%s-binary\ngo %s\nrequire %s %s\n' "$bin" \
    "$(go env GOVERSION | sed 's/^go//; s/^\([0-9]*\.[0-9]*\).*/\1/')" "$module" "$v" |
    LDFLAGS_EXTRA="" build_in_module "$v" "$bin=$pkg"
}

total=$SECONDS
build_simple etcd go.etcd.io/etcd/server/v3 go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
build_simple kwok sigs.k8s.io/kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"
build_simple helm helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm "$HELM_VERSION"
build_kubernetes
if [ "${1:-}" = "--peers" ]; then
  build_simple external-dns sigs.k8s.io/external-dns sigs.k8s.io/external-dns "$EXTERNAL_DNS_VERSION"
  build_simple sloth github.com/slok/sloth github.com/slok/sloth/cmd/sloth "$SLOTH_VERSION"
fi
log "all binaries ready in $cache ($((SECONDS - total))s)"
