#!/bin/sh
# Installs what `make demo` needs on a fresh Debian machine: the reference
# CNI plugins (portmap is chained after vnet-cni), iproute2 (`ip netns exec`
# runs vnet-ipamd inside the node namespaces) and nftables.
set -eu
if [ -x /usr/lib/cni/portmap ] && command -v ip >/dev/null 2>&1 && command -v nft >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "make demo: needs root (network namespaces); run it with sudo" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "make demo: install nftables, iproute2 and the CNI reference plugins (/usr/lib/cni/portmap)" >&2
  exit 1
fi
echo "make demo: installing nftables, iproute2 and containernetworking-plugins with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends nftables iproute2 containernetworking-plugins >/dev/null
