#!/bin/sh
# add-md5sums.sh DEB: add DEBIAN/md5sums to a .deb built by cargo-deb, which
# writes none. With it, `dpkg --verify openape-escapes` and debsums notice a
# changed /usr/bin/escapes or pam_openape.so. The package is unpacked and
# rebuilt with dpkg-deb; the data listing (modes, owners, sizes, paths) must
# come out identical, or the original is kept and this fails.
set -eu
deb=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
listing() {
	dpkg-deb --fsys-tarfile "$1" | tar -tv --numeric-owner |
		awk '$6 != "./" {print $1, $2, $3, $6}' | LC_ALL=C sort
}
listing "$deb" > "$tmp/before"
dpkg-deb -R "$deb" "$tmp/root"
(
	cd "$tmp/root"
	find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | LC_ALL=C sort |
		while IFS= read -r f; do md5sum "$f"; done
) > "$tmp/root/DEBIAN/md5sums"
chmod 0644 "$tmp/root/DEBIAN/md5sums"
dpkg-deb --root-owner-group -Zxz -b "$tmp/root" "$tmp/out.deb" >/dev/null
listing "$tmp/out.deb" > "$tmp/after"
if ! cmp -s "$tmp/before" "$tmp/after"; then
	echo "add-md5sums: rebuilding changed the contents (run as root so modes survive):" >&2
	diff "$tmp/before" "$tmp/after" >&2 || true
	exit 1
fi
mv "$tmp/out.deb" "$deb"
