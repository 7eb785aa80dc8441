"""Writing files atomically: a temporary file in the same folder, then a rename.

A reader sees the old file or the new one, never half of one; on any failure the temporary file
is removed and the destination is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def default_mode() -> int:
    """The permissions a new file gets here (0o666 less the umask); mkstemp's own are 0o600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(
    path: str | os.PathLike[str],
    data: str | bytes | Callable[[str], None],
    *,
    make_dirs: bool = True,
) -> Path:
    """Write ``data`` to ``path`` atomically and return the path.

    ``data`` is text (UTF-8), bytes, or a function that writes the file at the path it is given
    (``torch.save``, ``fig.savefig``, an exporter). The temporary file keeps ``path``'s suffix, so
    writers that look at the extension behave. ``make_dirs`` creates missing parent folders.
    """
    out = Path(path)
    folder = out.parent if str(out.parent) else Path(".")
    if make_dirs:
        folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{out.stem}.", suffix=f".tmp{out.suffix}")
    try:
        if callable(data):
            os.close(fd)
            data(tmp)
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data.encode("utf-8") if isinstance(data, str) else data)
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, default_mode())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
