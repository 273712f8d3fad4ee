"""Atomic writers: every output is written under a temporary name, then renamed.

A crash or a bad input therefore never leaves a half-written result behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import nibabel as nib
import numpy as np

from ldct.errors import DataError, MissingFileError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or "".join(path.suffixes), dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results should read like any file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """`atomic_path` for outputs that belong together: all are renamed onto their paths only
    once the block has written every one; on an error in the block none is. (The renames then
    follow one another: only a failing rename itself, e.g. a full disk's metadata, could leave
    some renamed and not others.)"""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(atomic_path(p)) for p in paths]


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """torch.save(obj) to `path` atomically, byte for byte the same for the same content:
    torch names the archive inside the file after the file it writes to (here a random
    temporary name), so the bytes are made in memory, where the name is fixed, and then
    written. A rewritten segmenter.pt with the same weights then keeps the fingerprint that
    the trainings using it resume by."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv(path: str | os.PathLike, df) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def write_nifti(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray, dtype=np.int16) -> None:
    """Write a (X, Y, Z) volume; HU is rounded when stored as int16."""
    write_niftis({path: (data, affine)}, dtype)


def write_niftis(volumes: dict, dtype=np.int16, also: dict | None = None) -> None:
    """Write volumes that belong together ({path: (data, affine)}): every one is checked and
    written under a temporary name first, and all are renamed into place only then, so a bad
    volume leaves every file as it was. `also` ({path: write(tmp_path)}) adds other files to
    the same all-or-none block (a manifest, copied companions)."""
    images = {}
    for path, (data, affine) in volumes.items():
        arr = np.asarray(data)
        if np.issubdtype(np.dtype(dtype), np.integer) and not np.issubdtype(arr.dtype, np.integer):
            if not np.isfinite(arr).all():
                raise DataError(f"{path}: refusing to write non-finite values")
            info = np.iinfo(dtype)
            arr = np.clip(np.rint(arr), info.min, info.max)
        img = nib.Nifti1Image(arr.astype(dtype), affine)
        img.header.set_xyzt_units("mm", "sec")
        images[path] = img
    also = also or {}
    with atomic_paths(*images, *also) as tmps:
        for img, tmp in zip(images.values(), tmps):
            nib.save(img, str(tmp))
        for write, tmp in zip(also.values(), tmps[len(images):], strict=True):
            write(tmp)


def read_nifti(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Return (data as float32, affine); a clear error for a missing or unreadable file."""
    try:
        img = nib.load(str(path))
        return np.asarray(img.dataobj, dtype=np.float32), img.affine
    except FileNotFoundError:
        raise MissingFileError(f"{path}: NIfTI file not found") from None
    except Exception as err:  # nibabel raises several types for corrupt files
        raise DataError(f"{path}: cannot read NIfTI: {err}") from err
