#!/usr/bin/env bash
# The README demo: a human-approved grant for `id`, run through the setuid
# escapes by a non-root user, against the test IdP on 127.0.0.1; then
# request mode: the agent enrolls a key, runs `escapes -- id` with no
# grant, the demo approves from the side after a pause, the command runs.
# Everything lives under /var/lib/openape-demo; the machine's /etc is not
# touched. Needs root (installs a setuid binary, creates a user).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}/debug
DEMO=/var/lib/openape-demo
USER_NAME=openape-demo
HOST=demo-host

if [ "$(id -u)" != 0 ]; then echo "demo: run as root (it installs a setuid binary)" >&2; exit 1; fi
id "$USER_NAME" >/dev/null 2>&1 || useradd -M -s /bin/sh -U "$USER_NAME"

rm -rf "$DEMO"
install -d -m 0755 "$DEMO" "$DEMO/bin" "$DEMO/etc"
install -d -m 0700 "$DEMO/log" "$DEMO/cache"
install -d -m 0755 -o "$USER_NAME" -g "$USER_NAME" "$DEMO/home"
install -o root -g root -m 4755 "$TARGET/escapes" "$DEMO/bin/escapes"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. Start the test IdP on loopback"
"$TARGET/openape-test-idp" --lifetime 120 > "$DEMO/idp.out" &
IDP_PID=$!
trap 'kill $IDP_PID 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q '^issuer=' "$DEMO/idp.out" 2>/dev/null && break; sleep 0.1; done
ISS=$(sed -n 's/^issuer=//p' "$DEMO/idp.out")
echo "issuer: $ISS"

step "2. Trust it: $DEMO/etc/config.toml (root-owned, 0600)"
cat > "$DEMO/etc/config.toml" <<TOML
host = "$HOST"
audit_log = "$DEMO/log/audit.log"

[security]
allowed_issuers = ["$ISS"]
allowed_approvers = ["alice@example.com"]
allow_unprivileged_loopback = true   # the demo IdP listens on a high port

[cache]
dir = "$DEMO/cache"
TOML
chmod 0600 "$DEMO/etc/config.toml"
cat "$DEMO/etc/config.toml"

# Pull one string field out of a flat JSON answer (no jq/python needed).
json() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"; }

step "3. An agent asks for 'id' as root on $HOST"
GID=$(curl -sf -X POST "$ISS/api/grants" -H 'Content-Type: application/json' \
  -d "{\"requester\":\"agent@example.com\",\"target_host\":\"$HOST\",\"audience\":\"escapes\",\"grant_type\":\"once\",\"command\":[\"id\"],\"run_as\":\"root\",\"reason\":\"demo\"}" | json id)
echo "grant $GID pending"

step "4. alice@example.com approves it; the agent fetches the signed grant"
curl -sf -X POST "$ISS/api/grants/$GID/approve" -H 'Content-Type: application/json' -d '{"decided_by":"alice@example.com"}' >/dev/null
curl -sf -X POST "$ISS/api/grants/$GID/token" | json authz_jwt > "$DEMO/grant.jwt"
chown "$USER_NAME" "$DEMO/grant.jwt"; chmod 0600 "$DEMO/grant.jwt"
echo "grant token written to $DEMO/grant.jwt (readable by $USER_NAME only)"

# Only root may choose a config, so the demo user's escapes reads the
# default path: a private mount namespace shows $DEMO/etc there (an overlay
# on /etc, so the machine's own /etc is never written). The same namespace
# shows $DEMO/home at the demo user's home directory (overlay on its parent),
# where request mode finds the agent key.
install -d -m 0700 "$DEMO/ns"
HOME_AT=$(getent passwd "$USER_NAME" | cut -d: -f6)
case "$(dirname "${HOME_AT:-/}")" in /) echo "demo: $USER_NAME needs a home directory below /home or similar" >&2; exit 1;; esac
as_demo_user() {
  unshare --mount --propagation private -- /bin/sh -c '
    mount -t tmpfs -o mode=0755 tmpfs "$1" && mkdir -m 0755 "$1/u" "$1/hu" && mkdir -m 0700 "$1/w" "$1/hw" &&
    mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1/u,workdir=$1/w" /etc &&
    mkdir -p /etc/openape && mount --bind "$2" /etc/openape &&
    P=$(dirname "$H") && mount -t overlay overlay -o "lowerdir=$P,upperdir=$1/hu,workdir=$1/hw" "$P" &&
    mkdir -p "$H" && mount --bind "$3" "$H" && shift 3 &&
    exec setpriv --reuid="$U" --regid="$U" --init-groups -- "$@"' sh "$DEMO/ns" "$DEMO/etc" "$DEMO/home" "$@"
}
export U="$USER_NAME" H="$HOME_AT"
ESC="$DEMO/bin/escapes --grant-file $DEMO/grant.jwt --"
step "5. $USER_NAME runs: escapes --grant-file grant.jwt -- id"
as_demo_user $ESC id
echo "exit status: $?"

step "6. The same grant again (once-grants are single use)"
set +e
as_demo_user $ESC id
echo "exit status: $? (5 = refused)"
step "7. The grant for 'id' used for 'id -u'"
as_demo_user $ESC id -u
echo "exit status: $? (5 = refused)"
set -e

IDP_BIN="$TARGET/openape-test-idp"
step "8. No grant yet? The agent enrolls a key once (with its own rights)"
as_demo_user "$DEMO/bin/escapes" enroll --idp "$ISS" --name demo-agent --agent-email agent@example.com > "$DEMO/enroll.out" 2>&1 &
ENROLL=$!
for _ in $(seq 100); do [ -s "$DEMO/home/.ssh/id_ed25519.pub" ] && break; sleep 0.1; done
sleep 0.5
# What the IdP's enrollment page does when the owner confirms it:
"$IDP_BIN" register-agent --email agent@example.com --public-key-file "$DEMO/home/.ssh/id_ed25519.pub" --issuer "$ISS"
wait "$ENROLL"
cat "$DEMO/enroll.out"

step "9. $USER_NAME runs: escapes -- id   (no grant: escapes asks the IdP and waits)"
as_demo_user "$DEMO/bin/escapes" -- id > "$DEMO/request.out" 2>&1 &
AGENT=$!
for _ in $(seq 100); do grep -q '^Approve at:' "$DEMO/request.out" 2>/dev/null && break; sleep 0.1; done
cat "$DEMO/request.out"
echo "(waiting for the approver …)"
sleep 3

step "10. alice@example.com approves from the side (her phone, in real life)"
"$IDP_BIN" approve --latest --as alice@example.com --issuer "$ISS"
set +e
wait "$AGENT"
STATUS=$?
set -e
echo "--- the agent's terminal ---"
cat "$DEMO/request.out"
echo "exit status: $STATUS"

step "11. The audit log ($DEMO/log/audit.log)"
cat "$DEMO/log/audit.log"
