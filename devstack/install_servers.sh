#!/usr/bin/env bash
# Unpacks Debian's Cyrus IMAP and Courier-IMAP into a cache directory for the compatibility tests
# (devstack/cyrus.py, devstack/courier.py). Both packages conflict with dovecot-imapd in apt, so
# they are fetched with `apt-get download` and unpacked with `dpkg-deb -x`, never installed; the
# shared libraries they need do not conflict and are installed normally.
#
# Idempotent and quick once done (a stamp file names the package versions unpacked).
# Needs root (or sudo) the first time: apt-get install, a `cyrus` system user, /etc/courier.
# Cache: $MAILSYNC_SERVERS_CACHE, default /var/cache/mailsync-servers.
set -euo pipefail

CACHE="${MAILSYNC_SERVERS_CACHE:-/var/cache/mailsync-servers}"
ROOT="$CACHE/root"
STAMP="$CACHE/.unpacked"

# Unpacked only: the servers themselves.
UNPACK=(cyrus-imapd cyrus-common courier-imap courier-base sasl2-bin)
# Installed: libraries the unpacked binaries link against, plus Courier's authentication library
# (authdaemond loads its modules from a fixed path, so it cannot run from the cache).
LIBS=(libsasl2-2 libsasl2-modules libsasl2-modules-db libxapian30 libpcre3 libical3 libltdl7 libidn12
	libgdbm6 libgamin0 libcourier-unicode4 courier-authlib courier-authlib-userdb)

SUDO=""
if [ "$(id -u)" != 0 ]; then
	SUDO="sudo"
fi

missing_libs() {
	local pkg
	for pkg in "${LIBS[@]}"; do
		dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q '^install ok installed$' || echo "$pkg"
	done
}

system_ready() {
	getent passwd cyrus >/dev/null && getent passwd courier >/dev/null && [ -d /etc/courier ] &&
		[ -z "$(missing_libs)" ]
}

# The fast path: nothing to do when the stamp is there and the system side is in place.
if [ -f "$STAMP" ] && [ -x "$ROOT/usr/lib/cyrus/bin/master" ] && [ -x "$ROOT/usr/bin/imapd" ] && system_ready; then
	exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# Another apt-get (a second make, unattended upgrades) may hold the lock for a while.
APT=(apt-get -o DPkg::Lock::Timeout=300 -qq)

updated=""
apt_update_once() {
	if [ -z "$updated" ]; then
		$SUDO "${APT[@]}" update
		updated=1
	fi
}

# Package lists may be absent on a fresh machine (docker images ship without them).
if ! apt-cache show "${UNPACK[0]}" >/dev/null 2>&1; then
	apt_update_once
fi

todo="$(missing_libs)"
if [ -n "$todo" ]; then
	# shellcheck disable=SC2086
	$SUDO "${APT[@]}" install -y --no-install-recommends $todo || {
		apt_update_once
		# shellcheck disable=SC2086
		$SUDO "${APT[@]}" install -y --no-install-recommends $todo
	}
fi

# Cyrus's master drops privileges to the compiled-in "cyrus" user; courier-authlib's postinst
# created "courier" already.
if ! getent passwd cyrus >/dev/null; then
	$SUDO useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin --gid mail cyrus
fi
# Courier's config path is compiled in; devstack/courier.py bind-mounts a per-server directory
# over it inside a private mount namespace, and a mount point must exist.
$SUDO mkdir -p /etc/courier

versions="$(apt-cache policy "${UNPACK[@]}" | awk '/^[^ ]/ {p=$1} /Candidate:/ {print p $2}' | tr '\n' ' ')"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$versions" ] && [ -x "$ROOT/usr/lib/cyrus/bin/master" ]; then
	exit 0
fi

$SUDO mkdir -p "$CACHE"
$SUDO chown "$(id -u):$(id -g)" "$CACHE"
work="$(mktemp -d "$CACHE/download.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# apt's sandbox user must be able to write the download directory.
chmod 0777 "$work"
(cd "$work" && { apt-get -qq download "${UNPACK[@]}" 2>/dev/null || { apt_update_once && apt-get -qq download "${UNPACK[@]}"; }; })

rm -rf "$ROOT.new"
mkdir -p "$ROOT.new"
for deb in "$work"/*.deb; do
	dpkg-deb -x "$deb" "$ROOT.new"
done
# The binaries run as the cyrus/courier users, who must be able to reach them.
chmod 0755 "$CACHE" "$ROOT.new"
rm -rf "$ROOT"
mv "$ROOT.new" "$ROOT"
echo "$versions" >"$STAMP"
echo "Cyrus IMAP and Courier-IMAP unpacked into $ROOT"
