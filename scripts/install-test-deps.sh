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
# The Secure Boot chain must be Debian 12's own: its shim (16.1) refuses
# bookworm-backports' signed GRUB 2.12 ("Verification failed: (0x1A)
# Security Violation"), which an install with `-t bookworm-backports`
# (below) would otherwise bring.
chain=(grub-common/bookworm grub2-common/bookworm grub-efi-amd64-bin/bookworm grub-efi-amd64-signed/bookworm shim-signed)
install_chain=false
for p in grub-efi-amd64-signed grub-efi-amd64-bin; do
  case "$(dpkg-query -W -f '${Version}' "$p" 2>/dev/null || true)" in
    *bpo*) install_chain=true ;;
  esac
done
if [ ${#missing[@]} -eq 0 ] && ! $install_chain; then
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

# The chain's packages go in on their own, from bookworm itself.
rest=()
for p in "${missing[@]}"; do
  case "$p" in
    shim-signed | grub-efi-amd64-signed) install_chain=true ;;
    *) rest+=("$p") ;;
  esac
done
$sudo apt-get update -qq
if [ ${#rest[@]} -gt 0 ]; then
  echo "install-test-deps: installing ${rest[*]}"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${release[@]}" "${rest[@]}" >/dev/null
fi
if $install_chain; then
  echo "install-test-deps: installing Debian 12's Secure Boot chain (${chain[*]})"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    --allow-downgrades "${chain[@]}" >/dev/null
fi
echo "install-test-deps: done ($(qemu-system-x86_64 --version | head -n 1))"
