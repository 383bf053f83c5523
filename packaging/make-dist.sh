#!/bin/sh
# make-dist.sh VERSION BIN PAM OUTDIR: the release tarball install.sh takes,
# openape-escapes-VERSION-ARCH-linux.tar.gz, plus SHA256SUMS and install.sh.
# Reproducible: sorted names, owner 0:0, mtimes of SOURCE_DATE_EPOCH.
set -eu
version=$1 bin=$2 pam=$3 out=$4
arch=$(uname -m)
name=openape-escapes-$version-$arch-linux
epoch=${SOURCE_DATE_EPOCH:-0}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
top=$tmp/$name
mkdir -p "$top/packaging/man" "$top/packaging/tmpfiles.d" "$top/packaging/logrotate" "$top/pam.d"
install -m 0755 "$bin" "$top/escapes"
install -m 0644 "$pam" "$top/pam_openape.so"
install -m 0755 packaging/install-files.sh packaging/install.sh "$top/packaging/"
install -m 0644 packaging/config.toml "$top/packaging/"
install -m 0644 packaging/man/escapes.8 packaging/man/pam_openape.8 packaging/man/openape.toml.5 "$top/packaging/man/"
install -m 0644 packaging/tmpfiles.d/openape.conf "$top/packaging/tmpfiles.d/"
install -m 0644 packaging/logrotate/openape "$top/packaging/logrotate/"
install -m 0644 pam.d/sudo.grant-or-password pam.d/sudo.grant-only pam.d/su.grant-or-password \
	pam.d/sudo.request pam.d/sudo.agent pam.d/su.request \
	pam.d/sudoers.openape pam.d/pam-auth-update.openape "$top/pam.d/"
install -m 0644 README.md LICENSE "$top/"
mkdir -p "$out"
tar -C "$tmp" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
	-cf - "$name" | gzip -9n > "$out/$name.tar.gz"
install -m 0755 packaging/install.sh "$out/install.sh"
(cd "$out" && sha256sum "$name.tar.gz" > SHA256SUMS)
echo "$out/$name.tar.gz"
echo "$out/SHA256SUMS"
