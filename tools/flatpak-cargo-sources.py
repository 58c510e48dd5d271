#!/usr/bin/env python3
"""Writes flatpak/cargo-sources.json from Cargo.lock: the offline crate sources for the Flatpak build.

The output has the format of flatpak-cargo-generator (flatpak-builder-tools), which is not
reachable offline here: for every crates.io package an `archive` source of the .crate file
(checked by the lock's sha256) unpacked into cargo/vendor/NAME-VERSION, an `inline`
.cargo-checksum.json beside it (cargo insists on one in a vendored crate; "files": {} skips the
per-file checks, the archive's sha256 already covers them), and last a cargo config that replaces
crates.io with that directory. The manifests set CARGO_HOME to the `cargo` dir of the build.

Standard library only, so it runs anywhere Python does. tests/packaging.rs checks that the
committed file is what this script makes from the committed Cargo.lock.

Usage: tools/flatpak-cargo-sources.py [Cargo.lock] [-o flatpak/cargo-sources.json]
       (-o - writes to stdout)
"""

import argparse
import json
import sys
import tomllib

CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"
CRATE_URL = "https://static.crates.io/crates/{name}/{name}-{version}.crate"
VENDOR_DIR = "cargo/vendor"
CARGO_CONFIG = (
    "[source.vendored-sources]\n"
    'directory = "cargo/vendor"\n'
    "\n"
    "[source.crates-io]\n"
    'replace-with = "vendored-sources"\n'
)


def sources_for(lock: dict) -> list:
    """The flatpak-builder sources for every package of a parsed Cargo.lock, in lock order."""
    sources = []
    for package in lock.get("package", []):
        source = package.get("source")
        if source is None:
            # The workspace's own crates: built from the checkout, not downloaded.
            continue
        name, version = package["name"], package["version"]
        if source != CRATES_IO:
            # Git or other registries would need their own source type; refuse rather than
            # write a manifest that fails later inside flatpak-builder.
            raise SystemExit(
                f"{name} {version} comes from {source}; only crates.io packages are supported"
            )
        checksum = package.get("checksum")
        if not checksum:
            raise SystemExit(f"{name} {version} has no checksum in Cargo.lock")
        dest = f"{VENDOR_DIR}/{name}-{version}"
        sources.append(
            {
                "type": "archive",
                "archive-type": "tar-gzip",
                "url": CRATE_URL.format(name=name, version=version),
                "sha256": checksum,
                "dest": dest,
            }
        )
        sources.append(
            {
                "type": "inline",
                "contents": json.dumps({"package": checksum, "files": {}}),
                "dest": dest,
                "dest-filename": ".cargo-checksum.json",
            }
        )
    sources.append(
        {
            "type": "inline",
            "contents": CARGO_CONFIG,
            "dest": "cargo",
            "dest-filename": "config",
        }
    )
    return sources


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lockfile", nargs="?", default="Cargo.lock")
    parser.add_argument("-o", "--output", default="flatpak/cargo-sources.json")
    args = parser.parse_args()
    with open(args.lockfile, "rb") as file:
        lock = tomllib.load(file)
    text = json.dumps(sources_for(lock), indent=4) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w", encoding="utf-8") as file:
            file.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
