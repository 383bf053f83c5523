#!/bin/sh
# install.sh: install escapes and pam_openape.so from a release tarball,
# after verifying its SHA-256 checksum. Nothing is unpacked, let alone
# installed, before the checksum matches.
#
#   curl -sSfL https://github.com/openape-ai/escapes/releases/latest/download/install.sh | sudo sh
#   sudo sh install.sh [--base-url URL|DIR] [--version VER] [--sha256 HEX]
#                      [--prefix DIR] [--destdir DIR]
#                      [--allow-unprivileged-loopback]
#
# --base-url  where the release files are: https://... (http only to a
#             loopback address), file:///dir, or a local directory. Default
#             $OPENAPE_RELEASE_URL, else the project's latest GitHub release.
#             It must hold SHA256SUMS and openape-escapes-VER-ARCH-linux.tar.gz.
# --version   which release tarball to take (default: the one SHA256SUMS names;
#             the highest version if it names several).
# --sha256    the expected SHA-256 of the tarball, from a source you trust
#             more than the download server; checked as well as SHA256SUMS
#             (which comes from the same server as the tarball, so it alone
#             protects against corruption, not against a compromised server).
# --prefix    install prefix (default /usr/local); --destdir stages into DIR.
# --allow-unprivileged-loopback
#             accept http://127.0.0.1:PORT (or localhost, [::1]) with PORT
#             1024 or above (at or above net.ipv4.ip_unprivileged_port_start):
#             any local user can bind such a port and would choose what root
#             installs (tests and demos only).
#
# Then it installs like `make install` (packaging/install-files.sh from the
# verified tarball): escapes root:root 4755, pam_openape.so in the PAM module
# directory, man pages, an example /etc/openape/config.toml (an existing one
# is never overwritten), tmpfiles.d, logrotate, the log and cache directories.
set -eu

BASE_URL=${OPENAPE_RELEASE_URL:-https://github.com/openape-ai/escapes/releases/latest/download}
VERSION=
PIN=
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
UNPRIV_LOOPBACK=

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

while [ $# -gt 0 ]; do
	case $1 in
	--base-url) BASE_URL=${2:?--base-url needs a value}; shift 2 ;;
	--base-url=*) BASE_URL=${1#*=}; shift ;;
	--version) VERSION=${2:?--version needs a value}; shift 2 ;;
	--version=*) VERSION=${1#*=}; shift ;;
	--sha256) PIN=${2:?--sha256 needs a value}; shift 2 ;;
	--sha256=*) PIN=${1#*=}; shift ;;
	--prefix) PREFIX=${2:?--prefix needs a value}; shift 2 ;;
	--prefix=*) PREFIX=${1#*=}; shift ;;
	--destdir) DESTDIR=${2:?--destdir needs a value}; shift 2 ;;
	--destdir=*) DESTDIR=${1#*=}; shift ;;
	--allow-unprivileged-loopback) UNPRIV_LOOPBACK=1; shift ;;
	-h|--help) sed -n '2,30p' "$0" 2>/dev/null | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown argument $1 (see --help)" ;;
	esac
done

[ "$(uname -s)" = Linux ] || die "only Linux is supported by this installer"
case $(uname -m) in
x86_64|amd64) ARCH=x86_64 ;;
aarch64|arm64) ARCH=aarch64 ;;
*) die "no release for $(uname -m)" ;;
esac
if [ -z "$DESTDIR" ] && [ "$(id -u)" != 0 ]; then
	die "run as root (it installs a setuid-root binary), or stage with --destdir DIR"
fi
command -v sha256sum >/dev/null 2>&1 || die "sha256sum (coreutils) is needed"
command -v tar >/dev/null 2>&1 || die "tar is needed"
if [ -n "$PIN" ]; then
	PIN=$(printf '%s' "$PIN" | tr 'A-F' 'a-f')
	printf '%s' "$PIN" | grep -Eq '^[0-9a-f]{64}$' || die "--sha256 must be 64 hex digits"
fi
if [ -n "$VERSION" ]; then
	printf '%s' "$VERSION" | grep -Eq '^[0-9A-Za-z.+~-]+$' || die "--version $VERSION is not a version"
fi

# http:// only to a loopback address: the whole authority (up to the first
# "/") must be 127.N.N.N, localhost or [::1], with an optional numeric port,
# and nothing else (no userinfo: "http://127.0.0.1@host/" goes to host; no
# "127.host.example" name). A port at or above the kernel's
# net.ipv4.ip_unprivileged_port_start (1024 by default, 0 in many
# containers; all ports when it cannot be read) is any local user's to bind
# first, so it needs --allow-unprivileged-loopback.
http_loopback() { # url
	auth=${1#http://}
	auth=${auth%%/*}
	case $auth in
	\[::1\]) host='[::1]' port= ;;
	\[::1\]:*) host='[::1]' port=${auth#\[::1\]:} ;;
	*:*) host=${auth%%:*} port=${auth#*:} ;;
	*) host=$auth port= ;;
	esac
	[ "$host" = '[::1]' ] || printf '%s\n' "$host" | grep -Eqx 'localhost|127\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}' || return 1
	[ -z "$port" ] || printf '%s\n' "$port" | grep -Eqx '[0-9]{1,5}' || return 1
	port=${port:-80}
	start=$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start 2>/dev/null) || start=0
	printf '%s\n' "$start" | grep -Eqx '[0-9]{1,5}' || start=0
	if [ "$port" -ge "$start" ] && [ -z "$UNPRIV_LOOPBACK" ]; then
		die "refusing $1: plain http on port $port, which any local user can bind (this kernel leaves ports from $start up to users, net.ipv4.ip_unprivileged_port_start), and so choose what is installed; use https, a port below $start or a local directory, or add --allow-unprivileged-loopback (tests and demos only)"
	fi
	return 0
}

# Where from: a directory, file://, https://, or http:// to loopback only.
case $BASE_URL in
https://*) MODE="curl" ;;
http://*)
	http_loopback "$BASE_URL" || die "refusing plain http to $BASE_URL: use https (or a local directory); http is allowed only to 127.0.0.1, localhost or [::1]"
	MODE="curl"
	;;
file://*) MODE="file"; BASE_DIR=${BASE_URL#file://} ;;
*://*) die "unsupported URL $BASE_URL" ;;
*) MODE="file"; BASE_DIR=$BASE_URL ;;
esac
if [ "$MODE" = curl ]; then
	command -v curl >/dev/null 2>&1 || die "curl is needed to download from $BASE_URL"
fi

fetch() { # name dest
	if [ "$MODE" = file ]; then
		[ -f "$BASE_DIR/$1" ] || die "$BASE_DIR/$1 not found"
		cp "$BASE_DIR/$1" "$2"
	else
		# https only, also after redirects (GitHub redirects downloads).
		curl -fsSL --proto '=https,http' --proto-redir '=https' --retry 2 \
			--max-time 300 -o "$2" "${BASE_URL%/}/$1" || die "cannot download ${BASE_URL%/}/$1"
	fi
}

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT INT TERM
fetch SHA256SUMS "$TMP/SHA256SUMS"

# Lines "<64 hex>  <name>" (or "<hex> *<name>"), names checked strictly so
# that SHA256SUMS can never name a path.
valid=$(sed -n "s/^\([0-9a-fA-F]\{64\}\) [ *]\(openape-escapes-[0-9A-Za-z.+~-]*-$ARCH-linux\.tar\.gz\)\$/\2 \1/p" "$TMP/SHA256SUMS")
if [ -n "$VERSION" ]; then
	NAME=openape-escapes-$VERSION-$ARCH-linux.tar.gz
else
	NAME=$(printf '%s\n' "$valid" | sed -n 's/ .*//p' | sort -V | tail -n 1)
	[ -n "$NAME" ] || die "SHA256SUMS names no openape-escapes-*-$ARCH-linux.tar.gz"
fi
WANT=$(printf '%s\n' "$valid" | awk -v n="$NAME" '$1 == n { print tolower($2); exit }')
[ -n "$WANT" ] || die "refusing: SHA256SUMS has no checksum for $NAME"
if [ -n "$PIN" ] && [ "$PIN" != "$WANT" ]; then
	die "refusing: SHA256SUMS says $WANT for $NAME, but --sha256 says $PIN"
fi

fetch "$NAME" "$TMP/$NAME"
GOT=$(sha256sum "$TMP/$NAME" | cut -d' ' -f1)
if [ "$GOT" != "$WANT" ]; then
	die "refusing: checksum mismatch for $NAME (expected $WANT, got $GOT); nothing was installed"
fi
say "checksum OK: $NAME ($GOT)"

TOPNAME=${NAME%.tar.gz}
mkdir "$TMP/x"
tar -xzf "$TMP/$NAME" -C "$TMP/x" --no-same-owner --no-same-permissions "$TOPNAME"
TOP=$TMP/x/$TOPNAME
for f in escapes pam_openape.so packaging/install-files.sh; do
	[ -f "$TOP/$f" ] || die "$NAME lacks $TOPNAME/$f"
done

BIN=$TOP/escapes PAM=$TOP/pam_openape.so
export DESTDIR PREFIX TOP BIN PAM
sh "$TOP/packaging/install-files.sh" install
say "done: $("$DESTDIR$PREFIX/bin/escapes" --version 2>/dev/null || echo "escapes installed in $DESTDIR$PREFIX/bin")"
