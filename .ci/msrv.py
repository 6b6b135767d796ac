"""Checks that the workspace's `rust-version` is true: not older than any locked dependency's.

Only one toolchain can be installed on the machines palaver is built on, so the declared
minimum cannot be proven by building with it; what can be checked is that no dependency in
Cargo.lock declares a newer minimum than the workspace does.
"""
import json
import subprocess
import sys
import tomllib


def version(text):
    parts = [int(part) for part in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


metadata = json.loads(subprocess.check_output(["cargo", "metadata", "--format-version", "1", "--locked"]))
with open("Cargo.toml", "rb") as manifest:
    declared = tomllib.load(manifest)["workspace"]["package"]["rust-version"]
newest = max(
    ((version(p["rust_version"]), p["name"], p["version"]) for p in metadata["packages"] if p.get("rust_version")),
    default=((0,), "", ""),
)
if newest[0] > version(declared):
    print(f"rust-version {declared} is older than {newest[1]} {newest[2]} needs ({'.'.join(map(str, newest[0]))})")
    sys.exit(1)
print(f"rust-version {declared}: no locked dependency needs a newer toolchain (newest: {newest[1]} {newest[2]})")
