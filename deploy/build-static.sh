#!/bin/sh
# The release binary of the container image: statically linked (glibc, crt-static), so it
# runs on an empty base. deploy/Dockerfile and the test of the image (tests/image.rs) build
# it with this one command; it prints the binary's path. CARGO_TARGET_DIR is honoured.
# getrandom is told to call the getrandom system call: in a static binary it cannot look the
# libc function up at run time and would fall back to /dev/urandom, which an empty root
# lacks.
set -eu
cd "$(dirname "$0")/.."
target=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS='-C target-feature=+crt-static --cfg getrandom_backend="linux_getrandom"' cargo build --release --locked --quiet --target "$target" "$@"
echo "${CARGO_TARGET_DIR:-target}/$target/release/sluice"
