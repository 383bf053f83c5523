# %postun of openape-escapes ($1: 0 erase, 1 upgrade).
# On erase the JWKS cache goes (it is only a cache); the audit log in
# /var/log/openape is KEPT, it is the record of who ran what as root. A
# changed /etc/openape/config.toml is kept by rpm as config.toml.rpmsave.
if [ "$1" = 0 ]; then
	rm -rf /var/cache/openape
	if [ -d /var/log/openape ]; then
		echo "openape-escapes: kept the audit log in /var/log/openape; remove it with: rm -r /var/log/openape"
	fi
fi
exit 0
