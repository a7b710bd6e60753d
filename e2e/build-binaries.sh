#!/usr/bin/env bash
# Builds the pinned upstream binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kube-proxy, kubectl, kwok, helm, CoreDNS) from their Go modules with the machine's Go toolchain,
# into a version-keyed cache outside the repository. Already-built binaries are skipped, so a
# warm run costs nothing.
#
#   e2e/build-binaries.sh            # build whatever is missing
#   e2e/build-binaries.sh --print    # print the cache directory and exit
#   e2e/build-binaries.sh --peers    # also build the peers benchmarks compare with (external-dns, Sloth)
#   e2e/build-binaries.sh --pin [--peers]  # after a version bump in versions.env: resolve the
#                                    # modules once, trusting the proxy, and write e2e/upstream/*/go.{mod,sum}
#
# Supply chain: every build runs in a module whose go.mod and go.sum are committed under
# e2e/upstream/<name>/ and uses -mod=readonly, so Go refuses any module zip whose hash differs from
# the committed go.sum, and any module the go.sum does not list. The public checksum database is
# unreachable from these machines, so the committed go.sum is the trust anchor: review its diff
# when re-pinning.
#
# Cache: $BULWARK_CACHE_DIR/bin (default ~/.cache/bulwark/bin); each file is named
# <binary>-<version>, which is where the Rust harness (e2e/src/binaries.rs) looks for it.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache=${BULWARK_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/bulwark}/bin
pinned_modules=$here/upstream
pin=0 peers=0
for arg in "$@"; do
  case "$arg" in
    --print) echo "$cache"; exit 0 ;;
    --pin) pin=1 ;;
    --peers) peers=1 ;;
    *) echo "usage: e2e/build-binaries.sh [--print|--pin] [--peers]" >&2; exit 2 ;;
  esac
done
mkdir -p "$cache"

# GOSUMDB=off: the checksum database is unreachable here; the committed go.sum verifies instead.
# GOTOOLCHAIN=local: never download another Go.
export GOSUMDB=off GOTOOLCHAIN=local GOFLAGS="-buildvcs=false" CGO_ENABLED=0

log() { printf '[build-binaries %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

have() { [ -x "$cache/$1-$2" ]; }

go_directive() { go env GOVERSION | sed 's/^go//; s/^\([0-9]*\.[0-9]*\).*/\1/'; }

# Runs `go build` for $@ in a throwaway module holding the committed go.mod and go.sum of
# e2e/upstream/<name>, then moves each output into the cache. With --pin, the go.mod given on
# stdin is resolved instead (-mod=mod) and the result is written back for committing.
# Arguments: name, module, version, then pairs of "binary=package".
build_in_module() {
  local name=$1 module=$2 version=$3; shift 3
  local pinned=$pinned_modules/$name
  local work; work=$(mktemp -d)
  if [ "$pin" = 1 ]; then
    cat >"$work/go.mod"
    log "$name: resolving $module $version and pinning its module graph in e2e/upstream/$name"
  else
    cat >/dev/null
    if ! grep -qE "^[[:space:]]*(require )?$module $version( |\$)" "$pinned/go.mod" 2>/dev/null ||
      [ ! -s "$pinned/go.sum" ]; then
      echo "e2e/upstream/$name/go.{mod,sum} do not pin $module $version (see e2e/versions.env):" \
        "run e2e/build-binaries.sh --pin, review and commit the go.sum" >&2
      exit 1
    fi
    cp "$pinned/go.mod" "$pinned/go.sum" "$work/"
  fi
  local mod_mode=readonly; [ "$pin" = 1 ] && mod_mode=mod
  (
    cd "$work"
    for pair in "$@"; do
      local bin=${pair%%=*} pkg=${pair#*=}
      if have "$bin" "$version" && [ "$pin" = 0 ]; then continue; fi
      log "building $bin $version ($pkg); first build is slow on 2 cores"
      local start=$SECONDS
      go build -mod=$mod_mode -trimpath -ldflags "-s -w $LDFLAGS_EXTRA" -o "$work/$bin" "$pkg"
      mv "$work/$bin" "$cache/$bin-$version"
      log "built $bin in $((SECONDS - start))s"
    done
  )
  if [ "$pin" = 1 ]; then
    mkdir -p "$pinned"
    cp "$work/go.mod" "$work/go.sum" "$pinned/"
  fi
  rm -rf "$work"
}

build_kubernetes() {
  local v=$KUBERNETES_VERSION staging=v0.${KUBERNETES_VERSION#v1.}
  local missing=0
  for b in kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl; do have "$b" "$v" || missing=1; done
  [ "$missing" = 1 ] || [ "$pin" = 1 ] || { log "kubernetes $v: cached"; return; }
  {
    if [ "$pin" = 1 ]; then
      log "kubernetes $v: fetching module metadata"
      local gomod; gomod=$(go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
      # k8s.io/kubernetes replaces its staging modules with local paths, which do not exist in the
      # published module; point each at its published version (v0.X.Y for v1.X.Y).
      echo "module bulwark.dev/k8s-binaries"
      echo "go $(go_directive)"
      echo "require k8s.io/kubernetes $v"
      sed -n 's#^\s*\(k8s\.io/[a-z0-9-]*\) => ./staging/src/.*#replace \1 => \1 '"$staging"'#p' "$gomod"
    fi
  } | LDFLAGS_EXTRA="-X k8s.io/component-base/version.gitVersion=$v \
      -X k8s.io/component-base/version.gitMajor=1 \
      -X k8s.io/component-base/version.gitMinor=$(echo "$v" | cut -d. -f2) \
      -X k8s.io/component-base/version.gitTreeState=clean" \
    build_in_module kubernetes k8s.io/kubernetes "$v" \
      kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
      kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
      kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler \
      kube-proxy=k8s.io/kubernetes/cmd/kube-proxy \
      kubectl=k8s.io/kubernetes/cmd/kubectl
}

build_simple() { # binary module package version
  local bin=$1 module=$2 pkg=$3 v=$4
  if have "$bin" "$v" && [ "$pin" = 0 ]; then log "$bin $v: cached"; return; fi
  printf 'module bulwark.dev/%s-binary\ngo %s\nrequire %s %s\n' "$bin" "$(go_directive)" "$module" "$v" |
    LDFLAGS_EXTRA="" build_in_module "$bin" "$module" "$v" "$bin=$pkg"
}

total=$SECONDS
build_simple etcd go.etcd.io/etcd/server/v3 go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
build_simple kwok sigs.k8s.io/kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"
build_simple helm helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm "$HELM_VERSION"
build_simple coredns github.com/coredns/coredns github.com/coredns/coredns "$COREDNS_VERSION"
build_kubernetes
if [ "$peers" = 1 ]; then
  build_simple external-dns sigs.k8s.io/external-dns sigs.k8s.io/external-dns "$EXTERNAL_DNS_VERSION"
  build_simple sloth github.com/slok/sloth github.com/slok/sloth/cmd/sloth "$SLOTH_VERSION"
fi
log "all binaries ready in $cache ($((SECONDS - total))s)"
