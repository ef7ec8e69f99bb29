#!/bin/sh
# Installs what `make demo` needs on a fresh Debian machine: the reference
# CNI plugins (portmap is chained after vnet-cni), iproute2 (`ip netns exec`
# runs vnet-ipamd inside the node namespaces) and nftables. Further Debian
# packages are named as arguments (`make demo-k8s`: etcd-server runc).
set -eu
missing=""
[ -x /usr/lib/cni/portmap ] || missing="$missing containernetworking-plugins"
command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
command -v nft >/dev/null 2>&1 || missing="$missing nftables"
for pkg in "$@"; do
  case "$pkg" in
    etcd-server) command -v etcd >/dev/null 2>&1 || missing="$missing etcd-server" ;;
    runc) [ -x /usr/sbin/runc ] || missing="$missing runc" ;;
    *) dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg" ;;
  esac
done
if [ -z "$missing" ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "make demo: needs root (network namespaces); run it with sudo" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "make demo: install$missing" >&2
  exit 1
fi
echo "make demo: installing$missing with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086 # one word per package
apt-get install -y -qq --no-install-recommends $missing >/dev/null
