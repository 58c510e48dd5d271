#!/bin/sh
# Called by src/meson.build: builds kiln with cargo for this profile and copies the binary to
# meson's output. A CARGO_TARGET_DIR from the environment is kept (shared caches); otherwise the
# target dir lives in the meson build dir.
set -eu

build_root=$1
source_root=$2
output=$3
buildtype=$4
export APP_ID="$5"
export KILN_PROFILE="$6"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$build_root/target}"

case "$buildtype" in
  release | plain | minsize)
    cargo build --release --manifest-path "$source_root/Cargo.toml" --bin kiln
    cp "$CARGO_TARGET_DIR/release/kiln" "$output"
    ;;
  *)
    cargo build --manifest-path "$source_root/Cargo.toml" --bin kiln
    cp "$CARGO_TARGET_DIR/debug/kiln" "$output"
    ;;
esac
