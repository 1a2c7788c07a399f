"""Checkpoint files: atomic writes, a checksum over the whole state, and
loading that names the file and what is wrong with it.

A checkpoint file is a ``torch.save`` of

    {"format": "ddm_fast.checkpoint", "version": 1,
     "sha256": <hex digest of the state>, "state": <the trainer's state>}

The digest covers every tensor's bytes, dtype and shape and every other
value of the state, each with its key path (:func:`state_digest`), so one
flipped bit in a weight, which ``torch.load`` itself does not notice, is
reported. Files are read with ``weights_only=True`` only: a checkpoint
never needs to run code to be loaded.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import pickle
import zipfile
from typing import Any, List, Mapping, Union

import torch

__all__ = ["CheckpointError", "atomic_save", "save_checkpoint_file",
           "load_checkpoint_file", "state_digest", "remove_orphaned_temporaries",
           "FORMAT", "VERSION"]

FORMAT = "ddm_fast.checkpoint"
VERSION = 1

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: missing pieces, corrupt bytes,
    another format, or a configuration other than the trainer's."""


def _temporary_path(path: str, pid: int) -> str:
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.tmp-{pid}")


def atomic_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` to ``path`` atomically: write a temporary file in the
    same directory, fsync it, then ``os.replace`` it over ``path``. A failure
    at any point leaves a previous file at ``path`` untouched."""
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp_path = _temporary_path(path, os.getpid())
    try:
        with open(tmp_path, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_path)
        raise
    # Make the rename itself durable (POSIX only; harmless to skip elsewhere).
    with contextlib.suppress(OSError, AttributeError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours, and we are not writing it now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True   # someone else's live process: leave its file alone
    return True


def remove_orphaned_temporaries(path: PathLike) -> List[str]:
    """Delete the temporary files :func:`atomic_save` left next to ``path``
    when a writer was killed mid-write (``.<name>.tmp-<pid>`` whose process
    no longer runs). Returns the removed paths."""
    path = os.path.abspath(os.fspath(path))
    removed = []
    pattern = glob.escape(_temporary_path(path, 0)[:-1]) + "*"
    for candidate in glob.glob(pattern):
        suffix = candidate.rsplit("-", 1)[-1]
        if not suffix.isdigit() or _process_alive(int(suffix)):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.remove(candidate)
            removed.append(candidate)
    return removed


# ------------------------------------------------------------------ digest
def _update_digest(digest, key: str, value: Any) -> None:
    digest.update(key.encode())
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"tensor{tuple(tensor.shape)}{tensor.dtype}".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, Mapping):
        digest.update(f"mapping{len(value)}".encode())
        for sub_key, sub_value in value.items():
            _update_digest(digest, f"{key}/{sub_key!r}", sub_value)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__}{len(value)}".encode())
        for index, item in enumerate(value):
            _update_digest(digest, f"{key}[{index}]", item)
    else:
        digest.update(repr(value).encode())


def state_digest(state: Any) -> str:
    """SHA-256 over every value of ``state`` (tensors by their bytes, dtype
    and shape), each with its key path: equal digests mean equal states."""
    digest = hashlib.sha256()
    _update_digest(digest, "", state)
    return digest.hexdigest()


# -------------------------------------------------------------- write/read
def save_checkpoint_file(state: Mapping[str, Any], path: PathLike) -> None:
    """Write ``state`` with its digest to ``path`` atomically."""
    atomic_save({"format": FORMAT, "version": VERSION,
                 "sha256": state_digest(state), "state": state}, path)


def load_checkpoint_file(path: PathLike) -> Mapping[str, Any]:
    """The state stored at ``path`` by :func:`save_checkpoint_file`, after
    checking the file's format and digest. Raises ``FileNotFoundError``
    when there is no file, :class:`CheckpointError` naming the file and the
    problem otherwise."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); it was "
                              "never written completely")
    if not zipfile.is_zipfile(path):
        # torch.save writes a zip archive; a file cut short loses the
        # archive's directory at its end.
        raise CheckpointError(
            f"checkpoint {path} ({size} bytes) is truncated or corrupt: it is "
            "not a complete torch archive (a write that was cut short, or "
            "another kind of file)")
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses objects that need code to be rebuilt; never
        # retry without it (that would run whatever the file holds).
        refused = [line.strip() for line in str(exc).splitlines()
                   if "GLOBAL" in line or "Unsupported" in line]
        raise CheckpointError(
            f"checkpoint {path} is not a ddm_fast checkpoint: it holds objects "
            "that only an unsafe load could rebuild, which ddm_fast never "
            f"does{' (' + refused[0] + ')' if refused else ''}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError,
            KeyError, IndexError) as exc:
        raise CheckpointError(
            f"checkpoint {path} ({size} bytes) is truncated or corrupt and "
            f"cannot be read: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not isinstance(stored, Mapping) or stored.get("format") != FORMAT:
        what = (f"a dict with keys {sorted(map(str, stored))[:8]}"
                if isinstance(stored, Mapping) else type(stored).__name__)
        raise CheckpointError(
            f"checkpoint {path} is not a ddm_fast checkpoint (expected a dict "
            f"with format={FORMAT!r}, found {what})")
    if stored.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {stored.get('version')!r}; "
            f"this ddm_fast reads version {VERSION}")
    state = stored.get("state")
    if not isinstance(state, Mapping) or not isinstance(stored.get("sha256"), str):
        raise CheckpointError(f"checkpoint {path} lacks its state or its "
                              "checksum; the file is damaged")
    if state_digest(state) != stored["sha256"]:
        raise CheckpointError(
            f"checkpoint {path} fails its checksum: the stored values differ "
            "from the ones written (a corrupt file, e.g. a flipped bit); "
            "refusing to load it")
    return state
