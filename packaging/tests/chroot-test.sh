#!/usr/bin/env bash
# chroot-test.sh (`make package-chroot-test`): the .deb in a fresh Debian
# chroot, the way an admin meets it. debootstrap --variant=minbase of this
# machine's release (needs the Debian mirror; the base system is cached in
# /var/cache/openape-chroot for the next run), then inside the chroot:
#
#   apt installs the .deb      escapes root:root 4755, directories, the
#                              pam-auth-update profile registered but off
#   shipped config             refuses to run anything until escapes trust
#   escapes trust              trusts the test IdP (running on the host's
#                              loopback, which the chroot shares)
#   a grant                    approved for `id -u`, run by a non-root user;
#                              replay refused; audit log line
#   PAM                        sudo from the mirror, the sample grant stack
#                              and sudoers drop-in from the package's
#                              examples: `sudo id -u` with the grant in
#                              OPENAPE_GRANT; pam-auth-update --enable
#   apt purge                  profile taken out of common-auth, a warning
#                              for /etc/pam.d/sudo, audit log kept
#
# Needs root. Runs in a private mount namespace (unshare), so /proc of the
# chroot is unmounted whatever happens. Ends with "N passed, N failed".
# shellcheck disable=SC2016,SC2034,SC1091 # cond evaluates its single-quoted condition later
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1

if [ "$(id -u)" != 0 ]; then
	echo "skipped: needs root (debootstrap, chroot)"
	exit 0
fi
if [ -z "${OPENAPE_CHROOT_NS:-}" ]; then
	exec env OPENAPE_CHROOT_NS=1 unshare --mount --propagation private -- "$0" "$@"
fi

T=${CARGO_TARGET_DIR:-target}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
DEB=$T/debian/openape-escapes_${VERSION}-1_amd64.deb
IDP_BIN=$T/debug/openape-test-idp
SUITE=${SUITE:-$(. /etc/os-release && echo "$VERSION_CODENAME")}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=/var/cache/openape-chroot/$SUITE-minbase.tar
C=/var/lib/openape-chroot
HOST=chroot-host
TUSER=demo

for f in "$DEB" "$IDP_BIN"; do
	[ -f "$f" ] || { echo "chroot-test: $f is missing: run make package-chroot-test"; exit 1; }
done

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok      $1"; }
bad() {
	failed=$((failed + 1))
	echo "FAILED  $1"
	[ -z "${2:-}" ] || printf '%s\n' "$2" | head -n 20 | sed 's/^/        /'
}
eq() { if [ "$2" = "$3" ]; then ok "$1"; else bad "$1" "expected: $2"$'\n'"got:      $3"; fi; }
contains() { grep -qF -- "$2" <<<"$1"; }
cond() { if eval "$2"; then ok "$1"; else bad "$1" "${out:-}"; fi; }
in_chroot() { chroot "$C" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }
mode_of() { in_chroot stat -c '%a %U:%G' "$1" 2>/dev/null || echo missing; }

start=$(date +%s)
command -v debootstrap >/dev/null 2>&1 || apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
rm -rf --one-file-system "$C"
mkdir -p "$C"
if [ -f "$CACHE" ]; then
	tar -xf "$CACHE" -C "$C"
	echo "chroot: $SUITE base from $CACHE"
else
	echo "chroot: debootstrap --variant=minbase $SUITE from $MIRROR (a minute or two)"
	if ! debootstrap --variant=minbase "$SUITE" "$C" "$MIRROR" >"$C.debootstrap.log" 2>&1; then
		tail -n 20 "$C.debootstrap.log"
		echo "chroot-test: debootstrap failed (is $MIRROR reachable?)"
		exit 1
	fi
	mkdir -p "$(dirname "$CACHE")"
	tar -cf "$CACHE" -C "$C" .
fi
echo "chroot: ready after $(($(date +%s) - start)) s"
mount -t proc proc "$C/proc"
cp "$DEB" "$C/tmp/openape-escapes.deb"

echo "== apt installs the .deb"
out=$(in_chroot apt-get install -y --no-install-recommends /tmp/openape-escapes.deb 2>&1)
cond "apt: installs openape-escapes" 'in_chroot dpkg -s openape-escapes 2>/dev/null | grep -q "^Status: install ok installed"'
eq "apt: /usr/bin/escapes is 4755 root:root" "4755 root:root" "$(mode_of /usr/bin/escapes)"
eq "apt: pam_openape.so is 644 root:root" "644 root:root" "$(mode_of /lib/x86_64-linux-gnu/security/pam_openape.so)"
eq "apt: config 600, log dir 750, audit.log 600, cache 700" "600 root:root 750 root:root 600 root:root 700 root:root" \
	"$(mode_of /etc/openape/config.toml) $(mode_of /var/log/openape) $(mode_of /var/log/openape/audit.log) $(mode_of /var/cache/openape)"
cond "apt: the profile is registered but off (common-auth does not name the module)" \
	'[ -f "$C/usr/share/pam-configs/openape" ] && ! grep -q pam_openape "$C/etc/pam.d/common-auth"'
cond "apt: no sudoers drop-in was installed" '[ ! -e "$C/etc/sudoers.d/openape" ]'
cond "apt: the install output tells the admin to run escapes trust" 'contains "$out" "escapes trust --idp"'
out=$(in_chroot escapes verify -n -- true 2>&1)
rc=$?
cond "shipped config: nothing runs before escapes trust (exit 1, names escapes trust)" \
	'[ $rc = 1 ] && contains "$out" "allowed_issuers is empty" && contains "$out" "escapes trust"'

echo "== escapes trust, then a grant"
"$IDP_BIN" --lifetime 300 >"$C.idp.out" 2>&1 &
IDP_PID=$!
trap 'kill $IDP_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q '^issuer=' "$C.idp.out" 2>/dev/null && break; sleep 0.1; done
ISS=$(sed -n 's/^issuer=//p' "$C.idp.out")
out=$(in_chroot escapes trust --idp "$ISS" --allow-unprivileged-loopback --approvers alice@example.com 2>&1)
rc=$?
cond "escapes trust: trusts the test IdP in the shipped config" '[ $rc = 0 ]'
eq "escapes trust: config stays 600 root:root" "600 root:root" "$(mode_of /etc/openape/config.toml)"
sed -i "1i host = \"$HOST\"" "$C/etc/openape/config.toml"
in_chroot sh -c "id $TUSER >/dev/null 2>&1 || useradd -m -s /bin/sh -U $TUSER"

json() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"; }
grant() { # JSON array of the command -> token on stdout
	local gid
	gid=$(curl -sf -X POST "$ISS/api/grants" -H 'Content-Type: application/json' \
		-d "{\"requester\":\"agent@example.com\",\"target_host\":\"$HOST\",\"audience\":\"escapes\",\"grant_type\":\"once\",\"command\":$1,\"run_as\":\"root\",\"reason\":\"chroot test\"}" | json id)
	curl -sf -X POST "$ISS/api/grants/$gid/approve" -H 'Content-Type: application/json' -d '{"decided_by":"alice@example.com"}' >/dev/null
	curl -sf -X POST "$ISS/api/grants/$gid/token" | json authz_jwt
}
grant '["id","-u"]' >"$C/home/$TUSER/grant.jwt"
in_chroot chown "$TUSER:$TUSER" "/home/$TUSER/grant.jwt"
as_user() { in_chroot setpriv --reuid="$TUSER" --regid="$TUSER" --init-groups -- "$@"; }
out=$(as_user escapes --grant-file "/home/$TUSER/grant.jwt" -- id -u 2>&1)
eq "grant: $TUSER runs 'id -u' as root with the installed escapes" "0 0" "$? $out"
out=$(as_user escapes --grant-file "/home/$TUSER/grant.jwt" -- id -u 2>&1)
eq "grant: replaying the once-grant is refused (exit 5)" 5 "$?"
cond "grant: audit.log has the run, still 600 root:root" \
	'grep -q "\"event\":\"grant_run\",\"via\":\"escapes\"" "$C/var/log/openape/audit.log" && [ "$(mode_of /var/log/openape/audit.log)" = "600 root:root" ]'

echo "== PAM: stock sudo with the sample stack from the package's examples"
out=$(in_chroot sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends sudo' 2>&1)
if in_chroot test -x /usr/bin/sudo; then
	EX=/usr/share/doc/openape-escapes/examples
	in_chroot install -m 0440 "$EX/sudoers.openape" /etc/sudoers.d/openape
	echo "$TUSER ALL=(ALL) ALL" >"$C/etc/sudoers.d/demo"
	chmod 0440 "$C/etc/sudoers.d/demo"
	out=$(in_chroot visudo -c 2>&1)
	rc=$?
	cond "sudo: visudo accepts the shipped drop-in" '[ $rc = 0 ]'
	cp "$C/etc/pam.d/sudo" "$C/etc/pam.d/sudo.orig"
	in_chroot cp "$EX/sudo.grant-or-password" /etc/pam.d/sudo
	tok=$(grant '["id","-u"]')
	grep -q "[[:space:]]$(hostname)\$" "$C/etc/hosts" || echo "127.0.1.1 $(hostname)" >>"$C/etc/hosts"
	out=$(in_chroot setpriv --reuid="$TUSER" --regid="$TUSER" --init-groups -- \
		env OPENAPE_GRANT="$tok" sudo id -u 2>&1 </dev/null)
	eq "sudo: 'sudo id -u' with a grant in OPENAPE_GRANT runs as root, no password" "0 0" "$? $out"
	cond "sudo: audit.log has via pam:sudo" 'grep -q "\"event\":\"grant_run\",\"via\":\"pam:sudo\"" "$C/var/log/openape/audit.log"'
	out=$(in_chroot setpriv --reuid="$TUSER" --regid="$TUSER" --init-groups -- sudo -n id -u 2>&1)
	rc=$?
	cond "sudo: without a grant it falls through to the password (refused with -n)" '[ $rc != 0 ]'
else
	bad "sudo: installs from the mirror" "$out"
fi
out=$(in_chroot pam-auth-update --enable openape 2>&1)
cond "pam-auth-update --enable openape: common-auth names the module" 'grep -q "pam_openape.so nonint" "$C/etc/pam.d/common-auth"'

echo "== apt purge"
out=$(in_chroot apt-get purge -y openape-escapes 2>&1)
cond "purge: removed" '! in_chroot dpkg -s openape-escapes >/dev/null 2>&1'
cond "purge: pam-auth-update took the module out of common-auth" '! grep -q pam_openape "$C/etc/pam.d/common-auth"'
cond "purge: warns that /etc/pam.d/sudo still names the module" 'contains "$out" "still named in" && contains "$out" "/etc/pam.d/sudo"'
cond "purge: escapes, the module, /etc/openape and the cache are gone" \
	'[ ! -e "$C/usr/bin/escapes" ] && [ ! -e "$C/lib/x86_64-linux-gnu/security/pam_openape.so" ] && [ ! -e "$C/etc/openape" ] && [ ! -e "$C/var/cache/openape" ]'
cond "purge: the audit log is kept, and the admin is told" '[ -s "$C/var/log/openape/audit.log" ] && contains "$out" "kept the audit log"'

kill $IDP_PID 2>/dev/null
trap - EXIT
umount "$C/proc" 2>/dev/null
rm -rf --one-file-system "$C" "$C.idp.out" "$C.debootstrap.log"
echo "chroot: took $(($(date +%s) - start)) s"
echo "chroot: $passed passed, $failed failed"
[ "$failed" = 0 ]
