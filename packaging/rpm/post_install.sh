# %post of openape-escapes ($1: 1 install, 2 upgrade).
# /usr/bin/escapes arrives root:root 4755 from the package itself.
# Audit log and JWKS cache directories: root-owned, closed to others;
# escapes never creates the log directory (a grant is not used when it
# cannot be logged). tmpfiles.d re-creates them at boot.
if command -v systemd-tmpfiles >/dev/null 2>&1; then
	systemd-tmpfiles --create openape.conf || :
fi
install -d -o root -g root -m 0750 /var/log/openape
install -d -o root -g root -m 0700 /var/cache/openape
# The log file too, root:root 0600 (one created by the setuid escapes would
# get the caller's group).
[ -e /var/log/openape/audit.log ] || install -o root -g root -m 0600 /dev/null /var/log/openape/audit.log
if [ "$1" = 1 ]; then
	echo "openape-escapes: nothing runs until you choose whom to trust:"
	echo "  escapes trust --idp https://id.openape.at --approvers you@example.com"
	echo "  (see escapes(8), openape.toml(5), pam_openape(8))"
fi
exit 0
