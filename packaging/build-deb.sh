#!/bin/sh
# Build baton's Debian package from a built binary, with dpkg-deb alone:
#   cargo build --profile dist -p baton --target x86_64-unknown-linux-musl \
#       && packaging/build-deb.sh
#   packaging/build-deb.sh [BATON_BINARY [OUT_DIR]]
# (defaults: the static build, target/ARCH-unknown-linux-musl/dist/baton,
# if there is one, else target/dist/baton; target/debian). The static
# build is the smaller resident set (docs/benchmarks.md). The package holds the
# binary, its manual pages and shell completions (made by the binary
# itself), the baton@.service template in /lib/systemd/system (instances
# read /etc/baton/NAME.toml) and the other units as examples, each with
# ExecStart= pointing at /usr/bin/baton. Its contents are listed in
# [package.metadata.deb] of crates/baton/Cargo.toml, for cargo-deb (which
# reads the generated files from assets/ next to the binary: run this
# script first, then `cargo deb -p baton --profile dist --no-build`), and
# crates/baton/tests/package.rs checks that both agree. DEB_COMPRESSION=none
# (or xz) chooses dpkg-deb's compression, gzip by default.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
static=$target/$(uname -m)-unknown-linux-musl/dist/baton
if [ -x "$static" ]; then default=$static; else default=$target/dist/baton; fi
given=${1:-$default}
baton=$(realpath "$given")
out=${2:-$target/debian}
[ -x "$baton" ] || { echo "no baton binary at $given (cargo build --profile dist -p baton)" >&2; exit 1; }
command -v dpkg-deb >/dev/null || { echo "dpkg-deb is needed (apt-get install dpkg)" >&2; exit 1; }

version=$("$baton" --version | cut -d' ' -f2)
arch=$(dpkg --print-architecture)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The generated files, where [package.metadata.deb] expects them.
assets=$(dirname "$given")/assets
mkdir -p "$assets/man" "$assets/completions" "$assets/systemd"
rm -f "$assets"/man/*
"$baton" man --dir "$assets/man"
gzip -9nf "$assets"/man/*.1
"$baton" completions bash >"$assets/completions/baton.bash"
"$baton" completions zsh >"$assets/completions/_baton"
"$baton" completions fish >"$assets/completions/baton.fish"
for unit in "$root"/systemd/*.service "$root"/systemd/*.socket; do
    sed 's|/usr/local/bin/baton|/usr/bin/baton|g' "$unit" >"$assets/systemd/$(basename "$unit")"
done

tree=$work/tree
put() { # SOURCE DEST_DIR MODE [NAME]
    install -D -m "$3" "$1" "$tree/$2/${4:-$(basename "$1")}"
}
put "$baton" usr/bin 755
for page in "$assets"/man/*.1.gz; do put "$page" usr/share/man/man1 644; done
put "$assets/completions/baton.bash" usr/share/bash-completion/completions 644 baton
put "$assets/completions/_baton" usr/share/zsh/vendor-completions 644
put "$assets/completions/baton.fish" usr/share/fish/vendor_completions.d 644
put "$assets/systemd/baton@.service" lib/systemd/system 644
for unit in baton.service baton-socket.service baton-socket.socket; do
    put "$assets/systemd/$unit" usr/share/doc/baton/examples/systemd 644
done
put "$root/packaging/copyright" usr/share/doc/baton 644
put "$root/LICENSE-MIT" usr/share/doc/baton 644
put "$root/LICENSE-APACHE" usr/share/doc/baton 644

mkdir -p "$tree/DEBIAN"
# Counted as cargo-deb does: each file's size in kB, plus 1 kB for its entry.
size=$(find "$tree" -type f ! -path "$tree/DEBIAN/*" -printf '%s\n' |
    awk '{ kb += int(($1 + 2047) / 1024) } END { print kb }')
cat >"$tree/DEBIAN/control" <<CONTROL
Package: baton
Version: $version
Architecture: $arch
Maintainer: baton developers <baton@users.noreply.github.com>
Installed-Size: $size
Depends: libc6
Section: admin
Priority: optional
Description: Supervisor daemon for zero-downtime restarts
 baton binds a server's listening sockets once and hands them to every
 new worker it starts (systemd's socket-activation protocol). A reload
 starts the next worker on the same sockets, waits until it is ready, and
 only then asks the old one to drain: no connection is refused or failed.
CONTROL

mkdir -p "$out"
deb=$out/baton_${version}_$arch.deb
dpkg-deb --root-owner-group -Z"${DEB_COMPRESSION:-gzip}" --build "$tree" "$deb" >/dev/null
echo "$deb"
