#!/usr/bin/env bash
# Installs the real clients and servers the test suite and benchmarks use,
# from Debian's archive. Needs root (or sudo). Does nothing when all are present.
set -euo pipefail

packages=(qemu-system-x86 ipxe-qemu ipxe ovmf tftp-hpa atftp curl tftpd-hpa wrk stress-ng dnsmasq-base iproute2 busybox-static cpio nginx-light prometheus chromium chromium-driver fonts-dejavu-core isc-dhcp-server kea-dhcp4-server kea-admin shim-signed grub-efi-amd64-signed sbsigntool)

# cargo-deb builds the Debian package its test installs.
if ! command -v cargo-deb >/dev/null 2>&1 && ! [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo-deb" ]; then
  echo "install-test-deps: installing cargo-deb"
  cargo install cargo-deb --locked --quiet
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-test-deps: all packages present"
  exit 0
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

# Some images carry qemu-utils 10.x from bookworm-backports; bookworm's own
# qemu-system-x86 (7.2) conflicts with it, so QEMU then comes from backports.
release=()
qemu_utils=$(dpkg-query -W -f '${Version}' qemu-utils 2>/dev/null || echo 0)
if dpkg --compare-versions "$qemu_utils" ge 1:8; then
  if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$mirror" ] || mirror="http://deb.debian.org/debian"
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$mirror" | $sudo tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
  fi
  release=(-t bookworm-backports)
fi

echo "install-test-deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
  "${release[@]}" "${missing[@]}" >/dev/null
echo "install-test-deps: done ($(qemu-system-x86_64 --version | head -n 1))"
