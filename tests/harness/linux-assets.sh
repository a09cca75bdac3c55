#!/bin/sh
# Makes a small Linux for the cache's end-to-end boot test:
#   OUTDIR/vmlinuz    Debian's cloud kernel, unpacked from its .deb
#                     (downloaded, never installed)
#   OUTDIR/initrd.gz  busybox-static as /init, which prints
#                     "SITEBOOT-LINUX-UP kernel=<release>" on the console
#                     and powers the machine off
# Does nothing when both exist. usage: linux-assets.sh OUTDIR
set -eu
out=${1:?usage: linux-assets.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
[ -s "$out/vmlinuz" ] && [ -s "$out/initrd.gz" ] && exit 0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
# The versioned package the meta-package points at.
image=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
if [ -z "$image" ] || ! apt-get download "$image" >/dev/null 2>&1; then
  apt-get update -qq
  image=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
  apt-get download "$image" >/dev/null
fi
dpkg-deb --fsys-tarfile ./linux-image-*.deb | tar -xO --wildcards './boot/vmlinuz-*' > vmlinuz
mkdir -p initrd/bin initrd/proc
cp /bin/busybox initrd/bin/busybox
cat > initrd/init <<'INIT'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo "SITEBOOT-LINUX-UP kernel=$(/bin/busybox uname -r)"
/bin/busybox poweroff -f
INIT
chmod 755 initrd/init
(cd initrd && find . | cpio -o -H newc --quiet) | gzip -9 > initrd.gz
mv vmlinuz "$out/vmlinuz"
mv initrd.gz "$out/initrd.gz"
