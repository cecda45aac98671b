"""Fetching one file from a public source, and telling "offline" from "this source failed".

:func:`probe` checks within a few seconds which hosts accept a connection, so that a download
without network fails fast with the list of files to place by hand. :func:`fetch_url` uses
pooch for plain URLs, :func:`fetch_gdrive` gdown for a file inside a public Google Drive
folder. A source that answers but cannot deliver raises :class:`SourceFailed` (the caller tries
the next source); a lost connection raises what the network layer raised
(:func:`is_network_error` recognises it).
"""
from __future__ import annotations

import functools
import logging
import re
import socket
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterable

PROBE_TIMEOUT = 3.0  # seconds for the connectivity probe
DEFAULT_TIMEOUT = 60.0  # seconds without a byte before a download is abandoned


class SourceFailed(Exception):
    """One source could not deliver a file (404, not in the Drive folder...); try the next."""


class HashMismatch(Exception):
    """The downloaded bytes do not have the sha256 the manifest publishes (pooch's check)."""

    def __init__(self, actual: str | None):
        super().__init__(actual)
        self.actual = actual


def probe(hosts: Iterable[tuple[str, int]], timeout: float = PROBE_TIMEOUT) -> set[tuple[str, int]]:
    """The hosts that accept a TCP connection within ``timeout`` seconds (all probed at once).

    DNS lookups run in the probing threads, so a hanging resolver cannot stall the
    caller beyond ``timeout``. With an HTTPS proxy configured, the proxy is probed instead.
    """
    hosts = list(dict.fromkeys(hosts))
    proxy = urllib.request.getproxies().get("https")
    targets = {}
    for h in hosts:
        if proxy and not urllib.request.proxy_bypass(h[0]):
            p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            targets[h] = (p.hostname, p.port or 80)
        else:
            targets[h] = h
    reachable: set = set()
    lock = threading.Lock()

    def attempt(host):
        try:
            socket.create_connection(targets[host], timeout=timeout).close()
        except (OSError, UnicodeError):
            return
        with lock:
            reachable.add(host)

    threads = [threading.Thread(target=attempt, args=(h,), daemon=True) for h in hosts]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    with lock:
        return set(reachable)


def is_network_error(exc: BaseException | None) -> bool:
    try:
        import requests
        net = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)
    except ImportError:  # pragma: no cover - requests comes with pooch and gdown
        net = ()
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (socket.gaierror, socket.timeout, TimeoutError, ConnectionError, *net)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def fetch_url(url: str, dest: Path, known_sha256: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> Path:
    """Download ``url`` to ``dest`` with pooch (checking ``known_sha256`` if given)."""
    import pooch
    import requests

    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # pooch logs every download and unknown hash at INFO/WARNING
    try:
        pooch.retrieve(url, known_hash=f"sha256:{known_sha256}" if known_sha256 else None, fname=dest.name,
                       path=dest.parent, downloader=pooch.HTTPDownloader(timeout=timeout, progressbar=False))
    except ValueError as exc:
        if "does not match the known hash" in str(exc):
            m = re.search(r"but got ([0-9a-fA-F]{64})", str(exc))
            raise HashMismatch(m.group(1).lower() if m else None) from None
        raise
    except requests.exceptions.HTTPError as exc:
        raise SourceFailed(f"{url}: {exc}") from exc
    finally:
        logger.setLevel(level)
    return dest


@functools.lru_cache(maxsize=8)
def _drive_listing(folder_id: str, timeout: float) -> tuple:
    import gdown

    return tuple(gdown.download_folder(id=folder_id, skip_download=True, quiet=True, timeout=timeout))


def fetch_gdrive(folder_id: str, rel_path: str, dest: Path, timeout: float = DEFAULT_TIMEOUT) -> Path:
    """Download the file at ``rel_path`` inside a public Google Drive folder to ``dest`` (gdown)."""
    import gdown

    want = rel_path.strip("/")
    try:
        listing = _drive_listing(folder_id, timeout)
    except gdown.exceptions.DownloadError as exc:
        if is_network_error(exc):
            raise
        raise SourceFailed(f"cannot list Google Drive folder {folder_id}: {exc}") from exc
    paths = {f.path.replace("\\", "/").strip("/"): f for f in listing}
    hit = paths.get(want) or next((f for p, f in paths.items() if p.endswith("/" + want)), None)
    if hit is None:
        near = [p for p in paths if want.split("/")[0] in p][:8] or list(paths)[:8]
        raise SourceFailed(f"Google Drive folder {folder_id} has no {want} (it holds e.g. {near}); "
                            f"the folder layout may have changed")
    try:
        gdown.download(id=hit.id, output=str(dest), quiet=False, timeout=timeout)
    except gdown.exceptions.DownloadError as exc:
        if is_network_error(exc):
            raise
        raise SourceFailed(f"Google Drive file {hit.id} ({want}): {exc}") from exc
    if not dest.is_file():
        raise SourceFailed(f"Google Drive file {hit.id} ({want}) was not written")
    return dest
