"""Fetching the official data files: streamed into a temporary file beside the
destination, md5-checked, then renamed into place, so a destination is either
absent or complete and a failed or interrupted download leaves nothing behind."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from open_lth.foundations.errors import UserError

CHUNK = 1 << 20


def md5sum(path: Path) -> str:
    """The md5 of a file, read in chunks so large archives need no large buffer."""
    # The official sums are md5; this guards against corruption, not tampering.
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download_allowed() -> bool:
    """False when OPEN_LTH_OFFLINE is set (to anything but "" or "0"): tests and
    machines without internet use it so that a missing file fails at once."""
    return os.environ.get("OPEN_LTH_OFFLINE", "") in ("", "0")


def download(url: str, dest: Path, md5: str | None, timeout: float = 30) -> None:
    """Download `url` to `dest`, checking its md5 when one is given.

    Any failure (network, short body, md5 mismatch, unwritable folder) raises
    UserError and leaves `dest` untouched, and removes the folders made for it.
    """
    if not download_allowed():
        raise UserError(f"not downloading {url}: downloads are off (OPEN_LTH_OFFLINE is set)")
    dest = Path(dest)
    tmp: Path | None = None
    made: list[Path] = []
    try:
        make_folders(dest.parent, made)
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(name)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            expected_size = response.headers.get("Content-Length")
            size = 0
            while chunk := response.read(CHUNK):
                out.write(chunk)
                size += len(chunk)
        # http.client does not raise when the connection closes early, so check.
        if expected_size is not None and expected_size.isdigit() and size != int(expected_size):
            raise UserError(
                f"download of {url} failed: got {size} bytes, the server announced {expected_size}"
            )
        if md5 is not None:
            got = md5sum(tmp)
            if got != md5:
                raise UserError(f"download of {url} is corrupt: md5 {got}, expected {md5}")
        os.replace(tmp, dest)
        tmp = None
        made = []
    except UserError:
        raise
    except urllib.error.HTTPError as e:
        raise UserError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise UserError(f"download of {url} failed: {e.reason}") from e
    except (OSError, ValueError) as e:
        # OSError: timeouts, resets, unwritable folders; ValueError: a malformed url.
        raise UserError(f"download of {url} to {dest} failed: {e}") from e
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        for folder in reversed(made):  # innermost first: a failure leaves no empty folder
            with contextlib.suppress(OSError):  # not empty after all: someone else's now
                folder.rmdir()


def make_folders(folder: Path, made: list[Path]) -> None:
    """Create `folder` and its missing parents, outermost first, appending each to `made`
    as it is created (so that a failure halfway can still undo the first ones)."""
    for f in [f for f in (folder, *folder.parents) if not f.exists()][::-1]:
        f.mkdir()
        made.append(f)


def fetch_first(urls: list[str], dest: Path, md5: str | None) -> None:
    """Try each mirror in turn; raise UserError with the last reason if none works."""
    if not urls:
        raise UserError(f"cannot download {Path(dest).name}: no mirror is configured")
    reason = ""
    for url in urls:
        try:
            download(url, dest, md5)
            return
        except UserError as e:
            reason = str(e)
    raise UserError(
        f"could not download {Path(dest).name} from any of {len(urls)} mirror(s); "
        f"last error: {reason}"
    )
