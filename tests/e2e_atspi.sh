#!/bin/bash
# Runs tests/e2e_atspi.py against a built kiln binary: its own X server (Xvfb), D-Bus session bus
# and AT-SPI bus, so it works on a headless CI machine and never touches the user's session.
# Usage: tests/e2e_atspi.sh [path/to/kiln]   (default: $CARGO_TARGET_DIR or target, debug build)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
binary=${1:-${CARGO_TARGET_DIR:-$here/../target}/debug/kiln}
unset GTK_A11Y NO_AT_BRIDGE
exec xvfb-run -a -s "-screen 0 1280x800x24" \
  dbus-run-session -- bash -c '
    /usr/libexec/at-spi-bus-launcher --launch-immediately &
    launcher=$!
    trap "kill $launcher 2>/dev/null || true" EXIT
    sleep 1
    /usr/bin/python3 "$0" "$1"
  ' "$here/e2e_atspi.py" "$binary"
