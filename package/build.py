#!/usr/bin/env python3
"""Builds the deployable Azure Functions app: one zip with host.json, the function folders, the
handler binary and the dataset declarations it serves, and nothing else; prints its size.

    package/build.py                      # cargo build --release, then dist/smartcache-functions.zip
    package/build.py --binary PATH        # package a binary built elsewhere (CI: the debug build)
    package/build.py --check ZIP          # check a zip against functions/ and host.json
"""
import argparse
import json
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "dist" / "smartcache-functions.zip"


def expected_entries():
    """Every file the app needs, as (path in the zip, path on disk)."""
    host = json.loads((ROOT / "host.json").read_text())
    executable = host["customHandler"]["description"]["defaultExecutablePath"]
    entries = [("host.json", ROOT / "host.json")]
    for function in sorted((ROOT / "functions").iterdir()):
        if (function / "function.json").is_file():
            entries.append((f"{function.name}/function.json", function / "function.json"))
    for declaration in sorted((ROOT / "datasets").glob("*.toml")):
        entries.append((f"datasets/{declaration.name}", declaration))
    return executable, entries


def build(binary, out):
    executable, entries = expected_entries()
    if binary is None:
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "handler"], cwd=ROOT, check=True)
        binary = ROOT / "target" / "release" / "handler"
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, path in entries:
            archive.write(path, name)
        # The Functions host runs the binary as it is unpacked: keep it executable.
        info = zipfile.ZipInfo(executable)
        info.external_attr = (stat.S_IFREG | 0o755) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        info.create_system = 3  # Unix, so that the mode above is honoured
        archive.writestr(info, Path(binary).read_bytes(), compresslevel=9)
    size = out.stat().st_size
    print(f"{out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}: {size / 1e6:.1f} MB "
          f"({len(entries) + 1} files; the binary is {Path(binary).stat().st_size / 1e6:.1f} MB unpacked)")
    return out


def check(zip_path):
    """The zip holds exactly host.json, each function folder's function.json, the dataset
    declarations and the executable (with its executable bit)."""
    executable, entries = expected_entries()
    with zipfile.ZipFile(zip_path) as archive:
        names = sorted(archive.namelist())
        wanted = sorted([name for name, _ in entries] + [executable])
        if names != wanted:
            missing = sorted(set(wanted) - set(names))
            extra = sorted(set(names) - set(wanted))
            sys.exit(f"{zip_path}: missing {missing}, unexpected {extra}")
        for name, path in entries:
            if archive.read(name) != path.read_bytes():
                sys.exit(f"{zip_path}: {name} differs from {path.relative_to(ROOT)}")
        mode = (archive.getinfo(executable).external_attr >> 16) & 0o777
        if not mode & 0o100:
            sys.exit(f"{zip_path}: {executable} is not executable (mode {mode:o})")
        functions = [n.split("/")[0] for n in names if n.endswith("/function.json")]
        print(f"{zip_path}: ok ({len(functions)} functions, host.json, {executable}, "
              f"{len([n for n in names if n.startswith('datasets/')])} dataset declarations)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", type=Path, help="package this binary instead of building one")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", type=Path, metavar="ZIP", help="only check an existing zip")
    args = parser.parse_args()
    if args.check:
        check(args.check)
        return
    check(build(args.binary, args.out.resolve()))


if __name__ == "__main__":
    main()
