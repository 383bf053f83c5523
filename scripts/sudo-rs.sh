#!/usr/bin/env bash
# Build the pinned sudo-rs (version in tests/sudo-rs.version) from crates.io
# for the real-sudo suites, and install it setuid-root in a private
# directory. The machine's sudo is never touched: the suites bind-mount the
# private copy over /usr/bin/sudo inside their own mount namespace.
#
#   /var/lib/openape-tests/sudo-rs/<version>/build/   cargo install --root
#   /var/lib/openape-tests/sudo-rs/<version>/bin/sudo root:root 4755
#   /var/lib/openape-tests/sudo-rs/<version>/unavailable
#       why the build failed (the suites print it as "skipped: ...")
#
# An installed binary of that version is reused (no rebuild). sudo-rs needs
# a C linker and libpam (gcc, libpam0g-dev: scripts/setup.sh). Under CI
# (CI=true) a failed build fails; elsewhere the sudo-rs variants of the
# suites are skipped with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO="${CARGO:-cargo}"
version="$(tr -d '[:space:]' < tests/sudo-rs.version)"
if ! [[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
  echo "sudo-rs: bad version '$version' in tests/sudo-rs.version" >&2
  exit 1
fi
if [ "$(id -u)" != 0 ]; then
  echo "skipped: sudo-rs $version for the tests is installed setuid-root, which needs root"
  exit 0
fi

top=/var/lib/openape-tests
dir="$top/sudo-rs/$version"
bin="$dir/bin/sudo"
for d in "$top" "$top/sudo-rs" "$dir" "$dir/bin"; do
  install -d -o root -g root -m 0755 "$d"
done

installed_ok() {
  [ -f "$bin" ] && [ ! -L "$bin" ] &&
    [ "$(stat -c '%u %a' "$bin")" = "0 4755" ] &&
    [ "$("$bin" --version 2>/dev/null | head -n 1)" = "sudo-rs $version" ]
}

if installed_ok; then
  rm -f "$dir/unavailable"
  echo "sudo-rs $version: reusing $bin"
  exit 0
fi

unavailable() {
  printf '%s\n' "$1" > "$dir/unavailable"
  if [ "${CI:-}" = true ]; then
    echo "sudo-rs $version: $1 (CI must test sudo-rs)" >&2
    exit 1
  fi
  echo "skipped: sudo-rs $version: $1"
  exit 0
}

echo "sudo-rs $version: building with cargo install --locked (about half a minute on 2 cores)"
start=$SECONDS
if ! env -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET_DIR \
    "$CARGO" install --locked --force --version "$version" sudo-rs --root "$dir/build" \
    > "$dir/build.log" 2>&1; then
  reason="$(grep -m 1 -E '^(error|warning: spurious)' "$dir/build.log" || tail -n 1 "$dir/build.log")"
  unavailable "cargo install sudo-rs $version failed: ${reason:-no output}; log: $dir/build.log"
fi
echo "sudo-rs $version: built in $((SECONDS - start)) s"

[ -f "$dir/build/bin/sudo" ] || unavailable "cargo install left no $dir/build/bin/sudo"
install -o root -g root -m 4755 "$dir/build/bin/sudo" "$bin.new"
mv -f "$bin.new" "$bin"
installed_ok || unavailable "$bin does not run as sudo-rs $version"
rm -f "$dir/unavailable"
echo "sudo-rs $version: installed $bin (setuid root)"
