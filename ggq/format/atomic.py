"""Writing a file so that it appears whole or not at all: bytes go to a temp file beside the
output (private, from mkstemp), which publish() fsyncs, gives the permissions a new file would
have had (the umask's), and renames into place; discard() removes it. The .ggq writer (its own
no-clobber publish) and the tools' output files (saved KLD references, imatrix files) use it."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def temp_beside(path):
    """(binary file open for writing, its path): a new temp file in path's folder."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp-", dir=path.resolve().parent)
    return os.fdopen(fd, "wb"), tmp


def publish(fh, tmp: str, path) -> Path:
    """Flush, fsync and close fh (the temp file tmp), then move it to path (replacing it)."""
    fh.flush()
    os.fsync(fh.fileno())
    fh.close()
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it private
    os.replace(tmp, path)
    sync_folder(path)
    return Path(path)


def discard(fh, tmp: str) -> None:
    """Close fh and remove the temp file tmp (nothing of the output remains)."""
    try:
        fh.close()
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def sync_folder(path) -> None:
    """fsync path's folder, so the rename itself survives a crash (best effort: not everywhere)."""
    try:
        dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
