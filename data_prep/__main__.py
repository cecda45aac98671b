"""Command line: ``python -m data_prep {download,import,verify,list}``.

    python -m data_prep download <name> [--data-root data] [--allow-unverified] [--timeout S]
    python -m data_prep import <dir> [--data-root data] [--names a,b] [--link] [--kind real|reference]
    python -m data_prep verify <name> [--data-root data]
    python -m data_prep list

Exit status: 0 success; 1 ``verify`` found a mismatch; 2 an error (one line saying what is
wrong, followed by details such as the files to place by hand); 130 interrupted.
"""
from __future__ import annotations

import argparse
import sys

from .download import download
from .errors import DataError, DownloadError
from .importing import import_dir
from .manifest import load_manifest
from .network import DEFAULT_TIMEOUT
from .provenance import CHECKSUMS_NAME, KINDS, read_source, verify


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_prep",
                                description="Get, import and verify dataset folders (see data_prep/manifest.yaml).")
    sub = p.add_subparsers(dest="command", required=True, metavar="{download,import,verify,list}")

    d = sub.add_parser("download", help="download the files of one dataset into <data-root>/<name>/ and verify them")
    d.add_argument("name", help="dataset name (baby, sports, clothing, elec, tiktok)")
    d.add_argument("--data-root", default="data", help="folder of dataset folders (default: data)")
    d.add_argument("--allow-unverified", action="store_true",
                   help=f"accept files that have no published hash; their sha256 goes into {CHECKSUMS_NAME}")
    d.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"seconds without data before a download is abandoned (default: {DEFAULT_TIMEOUT:g})")

    i = sub.add_parser("import", help="validate, hash-check and copy dataset folders that are already on disk")
    i.add_argument("dir", help="a folder of dataset folders (<dir>/<name>/...), or one dataset folder")
    i.add_argument("--data-root", default="data", help="folder of dataset folders (default: data)")
    i.add_argument("--names", default=None, help="comma-separated dataset names to import (default: all found)")
    i.add_argument("--link", action="store_true", help="symlink the files instead of copying them")
    i.add_argument("--kind", choices=KINDS, default=None,
                   help="label the data real or reference instead of inferring it")

    v = sub.add_parser("verify", help="recompute the checksums of <data-root>/<name>/")
    v.add_argument("name")
    v.add_argument("--data-root", default="data", help="folder of dataset folders (default: data)")

    sub.add_parser("list", help="list the datasets and files of the manifest and where they come from")
    return p


def _verify(args) -> int:
    checks = verify(args.name, args.data_root)
    folder = f"{args.data_root.rstrip('/')}/{args.name}"
    src = read_source(folder)
    label = f" ({src.get('kind')} data, from {src.get('origin')})" if src else ""
    print(f"{folder}{label}")
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"  {c.status:<9} {c.name:<{width}}  {c.detail}")
    counts = {}
    for c in checks:
        counts[c.status] = counts.get(c.status, 0) + 1
    print("summary: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return 1 if counts.get("mismatch") else 0


def _list() -> int:
    m = load_manifest()
    for name, ds in m.datasets.items():
        print(f"{name}: {ds.title}")
        for fe in ds.files.values():
            print(f"  {fe.name:<24} {fe.describe()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "download":
            download(args.name, args.data_root, allow_unverified=args.allow_unverified, timeout=args.timeout)
            return 0
        if args.command == "import":
            names = args.names.split(",") if args.names else None
            done = import_dir(args.dir, args.data_root, names=names, link=args.link, kind=args.kind)
            print(f"imported: {', '.join(done)} into {args.data_root}/")
            return 0
        if args.command == "verify":
            return _verify(args)
        return _list()
    except (DataError, DownloadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted (no partial file was left in place)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
