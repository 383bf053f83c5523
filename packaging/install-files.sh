#!/bin/sh
# install-files.sh install|uninstall: the source install behind `make install`,
# `make uninstall` and packaging/install.sh (which runs the copy inside a
# checksum-verified release tarball).
#
# Sources (paths):  BIN (escapes), PAM (pam_openape.so), TOP (a tree with
#                   packaging/ and pam.d/, as in the repository and the tarball)
# Destinations:     DESTDIR (staging root, default none), PREFIX (/usr/local),
#                   BINDIR ($PREFIX/bin), MANDIR ($PREFIX/share/man),
#                   DOCDIR ($PREFIX/share/doc/openape-escapes),
#                   TMPFILESDIR ($PREFIX/lib/tmpfiles.d), PAMDIR (detected).
# Fixed paths, the ones the binaries use whatever the prefix:
#   /etc/openape/config.toml (never overwritten), /etc/logrotate.d/openape,
#   /var/log/openape (0750), /var/cache/openape (0700).
# FORCE=1 lets uninstall go on while /etc/pam.d still names the module.
set -eu

action=${1:-}
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
BINDIR=${BINDIR:-$PREFIX/bin}
MANDIR=${MANDIR:-$PREFIX/share/man}
DOCDIR=${DOCDIR:-$PREFIX/share/doc/openape-escapes}
TMPFILESDIR=${TMPFILESDIR:-$PREFIX/lib/tmpfiles.d}
CONFDIR=/etc/openape
LOGROTATE=/etc/logrotate.d/openape
LOGDIR=/var/log/openape
CACHEDIR=/var/cache/openape
MANPAGES="man8/escapes.8 man8/pam_openape.8 man5/openape.toml.5"
EXAMPLES="sudo.grant-or-password sudo.grant-only su.grant-or-password sudo.request sudo.agent su.request sudoers.openape pam-auth-update.openape"

say() { echo "openape: $*"; }
die() { echo "openape: $*" >&2; exit 1; }

# The directory libpam loads bare module names from: where pam_unix.so is.
detect_pamdir() {
	case $(uname -m) in
	x86_64) ma=x86_64-linux-gnu ;;
	aarch64) ma=aarch64-linux-gnu ;;
	*) ma=$(uname -m)-linux-gnu ;;
	esac
	for d in /usr/lib/$ma/security /lib/$ma/security /usr/lib64/security /lib64/security \
		/usr/lib/security /lib/security; do
		if [ -e "$d/pam_unix.so" ]; then
			echo "$d"
			return 0
		fi
	done
	return 1
}
PAMDIR=${PAMDIR:-$(detect_pamdir || true)}
[ -n "$PAMDIR" ] || die "cannot find the PAM module directory (no pam_unix.so); set PAMDIR=/path/to/security"

if [ -z "$DESTDIR" ] && [ "$(id -u)" != 0 ]; then
	die "$action needs root (or DESTDIR=/staging/dir for a staged install)"
fi
if [ "$(id -u)" = 0 ]; then own="-o root -g root"; else own=""; fi

# Replace a file by rename, never in place: a running escapes or a process
# that has pam_openape.so mapped keeps its old copy intact.
put() { # mode src dest
	# Existing directories keep their owner and mode (/usr/local may be
	# root:staff 2775); missing ones are created 0755.
	[ -d "$(dirname "$3")" ] || install -d -m 0755 "$(dirname "$3")"
	# shellcheck disable=SC2086
	install $own -m "$1" "$2" "$3.openape-new"
	# A set-id file being replaced keeps a second name until the new one
	# is in place (no moment without it at $3), then is retired.
	old=
	if is_setid "$3" && ln -f "$3" "$3.openape-old"; then old="$3.openape-old"; fi
	mv -f "$3.openape-new" "$3"
	if [ -n "$old" ]; then retire "$old" && rm -f "$old"; fi
}

is_setid() { # path: a regular file (not a symlink) with a set-id bit
	[ -f "$1" ] && [ ! -L "$1" ] && { [ -u "$1" ] || [ -g "$1" ]; }
}

# A setuid file that is replaced or removed is first made 0600: a hard link
# someone made to it elsewhere on the file system (where
# fs.protected_hardlinks allows it) must not stay a setuid-root copy of
# the old release. dpkg and rpm do the same with the files they replace.
retire() { # path
	if is_setid "$1"; then chmod 0600 "$1"; fi
}

do_install() {
	BIN=${BIN:?BIN= path of the escapes binary}
	PAM=${PAM:?PAM= path of the built pam_openape.so}
	TOP=${TOP:?TOP= tree with packaging/ and pam.d/}
	[ -f "$BIN" ] || die "$BIN not found: build first (make release, as your user)"
	[ -f "$PAM" ] || die "$PAM not found: build first (make release, as your user)"

	put 4755 "$BIN" "$DESTDIR$BINDIR/escapes"
	say "installed $BINDIR/escapes (root:root 4755)"
	put 0644 "$PAM" "$DESTDIR$PAMDIR/pam_openape.so"
	say "installed $PAMDIR/pam_openape.so"

	tmp=$(mktemp -d)
	for m in $MANPAGES; do
		gzip -9n -c "$TOP/packaging/man/${m#*/}" > "$tmp/page.gz"
		put 0644 "$tmp/page.gz" "$DESTDIR$MANDIR/$m.gz"
	done
	rm -rf "$tmp"
	for e in $EXAMPLES; do
		put 0644 "$TOP/pam.d/$e" "$DESTDIR$DOCDIR/examples/$e"
	done
	put 0644 "$TOP/packaging/tmpfiles.d/openape.conf" "$DESTDIR$TMPFILESDIR/openape.conf"
	say "installed man pages in $MANDIR, examples in $DOCDIR/examples, $TMPFILESDIR/openape.conf"

	if [ -e "$DESTDIR$LOGROTATE" ]; then
		say "kept the existing $LOGROTATE"
	else
		put 0644 "$TOP/packaging/logrotate/openape" "$DESTDIR$LOGROTATE"
		say "installed $LOGROTATE"
	fi

	# shellcheck disable=SC2086
	install -d $own -m 0755 "$DESTDIR$CONFDIR"
	if [ -e "$DESTDIR$CONFDIR/config.toml" ]; then
		say "kept the existing $CONFDIR/config.toml"
	else
		# shellcheck disable=SC2086
		install $own -m 0600 "$TOP/packaging/config.toml" "$DESTDIR$CONFDIR/config.toml"
		say "installed $CONFDIR/config.toml: it names no IdP yet, so nothing runs until you run"
		say "  escapes trust --idp https://id.openape.at --approvers you@example.com"
	fi
	# shellcheck disable=SC2086
	install -d $own -m 0750 "$DESTDIR$LOGDIR"
	# shellcheck disable=SC2086
	install -d $own -m 0700 "$DESTDIR$CACHEDIR"
	# The log file too, root:root 0600 (one created by the setuid escapes
	# would get the caller's group).
	if [ ! -e "$DESTDIR$LOGDIR/audit.log" ]; then
		# shellcheck disable=SC2086
		install $own -m 0600 /dev/null "$DESTDIR$LOGDIR/audit.log"
	fi
	say "audit log directory $LOGDIR (0750), cache $CACHEDIR (0700)"
	say "PAM is not configured by this: see pam_openape(8) to enable the module for sudo or su"
}

do_uninstall() {
	left=$(grep -ls '^[^#]*pam_openape\.so' "$DESTDIR"/etc/pam.d/* 2>/dev/null || true)
	if [ -n "$left" ]; then
		echo "openape: pam_openape.so is still named in:" >&2
		for f in $left; do echo "  $f" >&2; done
		if [ "${FORCE:-}" != 1 ]; then
			die "take those lines out first (a 'required' line naming a missing module fails every login through that stack), or run with FORCE=1"
		fi
		echo "openape: FORCE=1: removing the module anyway" >&2
	fi
	for f in "$BINDIR/escapes" "$PAMDIR/pam_openape.so" "$TMPFILESDIR/openape.conf"; do
		if [ -e "$DESTDIR$f" ]; then retire "$DESTDIR$f" && rm -f "$DESTDIR$f" && say "removed $f"; fi
		# What an interrupted install left beside it (a setuid copy, maybe).
		for t in "$DESTDIR$f.openape-new" "$DESTDIR$f.openape-old"; do
			if [ -e "$t" ] || [ -L "$t" ]; then retire "$t" && rm -f "$t" && say "removed ${t#"$DESTDIR"}, left by an interrupted install"; fi
		done
	done
	for m in $MANPAGES; do rm -f "$DESTDIR$MANDIR/$m.gz"; done
	rm -rf "$DESTDIR$DOCDIR"
	say "removed the man pages and $DOCDIR"
	if [ -e "$DESTDIR$LOGROTATE" ]; then
		if [ -n "${TOP:-}" ] && cmp -s "$TOP/packaging/logrotate/openape" "$DESTDIR$LOGROTATE"; then
			rm -f "$DESTDIR$LOGROTATE" && say "removed $LOGROTATE"
		else
			say "kept $LOGROTATE (changed locally)"
		fi
	fi
	rm -rf "$DESTDIR$CACHEDIR"
	say "removed the JWKS cache $CACHEDIR"
	[ -e "$DESTDIR$CONFDIR/config.toml" ] && say "kept $CONFDIR/config.toml (your trust settings); remove it yourself if no longer needed"
	[ -d "$DESTDIR$LOGDIR" ] && say "kept the audit log in $LOGDIR; remove it yourself if no longer needed"
	return 0
}

case $action in
install) do_install ;;
uninstall) do_uninstall ;;
*) die "usage: install-files.sh install|uninstall" ;;
esac
