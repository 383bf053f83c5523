# %preun of openape-escapes ($1: 0 erase, 1 upgrade).
# PAM stacks are the admin's (edited by hand or by authselect): warn, loudly,
# about every file that still names the module. A "required" line naming a
# missing module fails every authentication through that stack.
if [ "$1" = 0 ]; then
	left=$(grep -ls '^[^#]*pam_openape\.so' /etc/pam.d/* 2>/dev/null || :)
	if [ -n "$left" ]; then
		echo "openape-escapes: WARNING: pam_openape.so is still named in:" >&2
		for f in $left; do echo "  $f" >&2; done
		echo "openape-escapes: remove those lines (or restore the saved files) now, or" >&2
		echo "  sudo/su through those stacks will fail once the module is gone." >&2
	fi
fi
exit 0
