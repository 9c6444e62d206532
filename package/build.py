#!/usr/bin/env python3
"""Builds the deployable Azure Functions app: one zip with host.json, the function folders, the
handler binary (stripped; its debug information kept beside the zip as handler.debug) and the
dataset declarations it serves, and nothing else; prints its size.

    package/build.py                      # cargo build --release, then dist/smartcache-functions.zip
    package/build.py --binary PATH        # package a binary built elsewhere (CI: the debug build)
    package/build.py --check ZIP          # check a zip against functions/ and host.json
    package/build.py --cold-start         # and time the unpacked binary to its first 200
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


def stripped(binary, out_dir):
    """A copy of `binary` without debug information and symbols (what the Functions host runs),
    and the debug information split off beside the zip (`handler.debug`, linked from the copy by
    a GNU debuglink), so a crash's addresses can still be resolved offline."""
    debug = out_dir / "handler.debug"
    copy = out_dir / "handler.stripped"
    subprocess.run(["objcopy", "--only-keep-debug", str(binary), str(debug)], check=True)
    subprocess.run(["objcopy", "--strip-all", f"--add-gnu-debuglink={debug.name}", str(binary), str(copy)],
                   cwd=out_dir, check=True)
    return copy, debug


def build(binary, out):
    executable, entries = expected_entries()
    if binary is None:
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "handler"], cwd=ROOT, check=True)
        binary = ROOT / "target" / "release" / "handler"
    out.parent.mkdir(parents=True, exist_ok=True)
    unstripped_size = Path(binary).stat().st_size
    binary, debug = stripped(Path(binary).resolve(), out.parent)
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
    shown = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    print(f"{shown}: {size / 1e6:.1f} MB ({len(entries) + 1} files; the binary is "
          f"{Path(binary).stat().st_size / 1e6:.1f} MB unpacked, stripped from "
          f"{unstripped_size / 1e6:.1f} MB; debug information in {debug.name}, "
          f"{debug.stat().st_size / 1e6:.1f} MB, not deployed)")
    Path(binary).unlink()
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


def cold_start(zip_path, runs=5):
    """Unpacks the zip as the Functions host would and times `handler serve` from its start to
    the first 200 of /api/health (a fresh SQLite database each run): the median and the range."""
    import socket
    import tempfile
    import time
    import urllib.request
    times = []
    with tempfile.TemporaryDirectory() as work:
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(work)
        executable, _ = expected_entries()
        handler = Path(work) / executable
        handler.chmod(0o755)
        for run in range(runs):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            env = {"PATH": "/usr/bin:/bin", "FUNCTIONS_CUSTOMHANDLER_PORT": str(port),
                   "DATABASE_URL": f"sqlite://{work}/cold{run}.db", "DATASETS_DIR": f"{work}/datasets"}
            started = time.monotonic()
            process = subprocess.Popen([str(handler), "serve"], cwd=work, env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                while True:
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1) as r:
                            if r.status == 200:
                                break
                    except OSError:
                        if time.monotonic() - started > 20:
                            sys.exit("no 200 from /api/health within 20 s")
                        time.sleep(0.002)
                times.append(time.monotonic() - started)
            finally:
                process.terminate()
                process.wait()
    times.sort()
    print(f"cold start to the first 200 (/api/health, {runs} runs): median {times[len(times) // 2] * 1000:.0f} ms "
          f"(range {times[0] * 1000:.0f}-{times[-1] * 1000:.0f} ms)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", type=Path, help="package this binary instead of building one")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", type=Path, metavar="ZIP", help="only check an existing zip")
    parser.add_argument("--cold-start", action="store_true",
                        help="then time the unpacked binary from start to its first 200")
    args = parser.parse_args()
    if args.check:
        check(args.check)
        return
    out = build(args.binary, args.out.resolve())
    check(out)
    if args.cold_start:
        cold_start(out)


if __name__ == "__main__":
    main()
