#!/usr/bin/env bash
# Installs a built siteboot (target/release/siteboot) as a systemd service.
set -euo pipefail
cd "$(dirname "$0")/.."
install -Dm0755 target/release/siteboot /usr/bin/siteboot
install -Dm0644 packaging/sysusers.d/siteboot.conf /usr/lib/sysusers.d/siteboot.conf
systemd-sysusers /usr/lib/sysusers.d/siteboot.conf
[ -e /etc/siteboot/siteboot.toml ] || install -Dm0640 -g siteboot packaging/siteboot.toml /etc/siteboot/siteboot.toml
install -d -m0755 /srv/siteboot/boot-assets /srv/siteboot/templates
install -Dm0644 packaging/systemd/siteboot.service /etc/systemd/system/siteboot.service
install -Dm0644 README.md /usr/share/doc/siteboot/README.md
systemctl daemon-reload
echo "installed; edit /etc/siteboot/siteboot.toml, then: systemctl enable --now siteboot"
