"""Files that appear whole or not at all: written under a temporary name beside their target, then
renamed (a rename within a directory is atomic on POSIX filesystems), so an interrupted write
never leaves a half file under the real name. The one line for a dataset shard that cannot be
read, the types of every command's path and seed flags, and the claim file that keeps two
processes from writing one folder at once."""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def path_argument(text: str) -> Path:
    """``Path(text)``, the argparse ``type`` of every path flag; ArgumentTypeError for an empty or
    blank value. That is nearly always an unset shell variable (``--out "$OUT"``), and ``Path("")``
    is the current folder, which the command would then read or write into."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path (an unset shell variable?)")
    return Path(text)


MAX_SEED = 2**31 - 1  # what every consumer takes: NumPy, JAX's keys, gymnasium and ALE (a C int)


def seed_argument(text: str) -> int:
    """``int(text)``, the argparse ``type`` of every seed flag; ArgumentTypeError unless it is a
    whole number from 0 to `MAX_SEED`. Outside that range some consumers refuse the seed with a
    traceback (JAX's and NumPy's overflow) and others silently wrap it (-1 seeding as 2**32 - 1)."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= seed <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{seed} is out of range: a seed is a whole number from 0 to {MAX_SEED}")
    return seed


def names_argument(choices: Sequence[str]) -> Callable[[str], list[str]]:
    """The argparse ``type`` of a comma-separated list of names from ``choices`` (modes, sizes,
    agents): the names given, stripped; ArgumentTypeError for an unknown name or a list naming none
    (an empty list ran nothing and exited 0)."""

    def names(text: str) -> list[str]:
        given = [name.strip() for name in text.split(",") if name.strip()]
        if not given:
            raise argparse.ArgumentTypeError(f"{text!r} names nothing; choose from {', '.join(choices)}")
        if unknown := [name for name in given if name not in choices]:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}; choose from {', '.join(choices)}")
        return given

    return names


def count_argument(least: int = 1) -> Callable[[str], int]:
    """The argparse ``type`` of a count flag (steps, batch, repeats, ...): a whole number >= ``least``;
    ArgumentTypeError otherwise (a zero count divided by zero or measured nothing)."""

    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value}: must be at least {least}")
        return value

    count.__name__ = f"count (>= {least})"  # argparse names the type in some messages
    return count


def output_file_argument(text: str) -> Path:
    """The argparse ``type`` of a flag naming a file a command writes at its end (``--json``):
    checked before the work, so a bad path does not cost the figures. ArgumentTypeError for an empty
    path, a directory, or a file whose folder does not exist or cannot be written."""
    path = path_argument(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path}: is a directory; name the file to write")
    folder = path.absolute().parent
    if not folder.is_dir():
        fault = "is a file, not a folder" if folder.exists() else "does not exist"
        raise argparse.ArgumentTypeError(f"{path}: its folder {folder} {fault}")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise argparse.ArgumentTypeError(f"{path}: cannot be written")
    return path


def first_line(error: BaseException) -> str:
    """An error's message as one line: its first, or its type's name when it has none (the one-line
    errors every command prints; JAX appends its traceback notice to an error raised while tracing)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


_WRITE_FAULTS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}  # what only a write meets


def error_line(error: BaseException, folder: str | os.PathLike | None = None) -> str:
    """The one line a command prints for ``error`` (``first_line``); an OSError of a write the OS
    raised naming no file (``[Errno 28] No space left on device`` from a flush) names ``folder``,
    where the command writes."""
    if (folder is not None and isinstance(error, OSError) and error.errno in _WRITE_FAULTS
            and error.filename is None):
        return f"{folder}: cannot be written ({error.strerror})"
    return first_line(error)


def folder_of(path: str | os.PathLike) -> str:
    """The folder a path names: a local path resolved (``~``, ``..``, symbolic links), so that a
    relative and an absolute path of one folder are one; a remote one (``gs://...``) as written."""
    return str(path) if "://" in str(path) else os.path.realpath(os.path.expanduser(path))


def check_each_folder_once(paths: Sequence[str | os.PathLike], field: str) -> None:
    """ValueError (one line) when two of ``paths`` name one folder (``data`` and ``./data``, a link):
    its data would be read twice and weigh double, without a word."""
    seen: dict[str, str | os.PathLike] = {}
    for path in paths:
        if (folder := folder_of(path)) in seen:
            raise ValueError(f"{field}: {seen[folder]} and {path} are one folder; give it once")
        seen[folder] = path


def _naming(error: OSError, path: Path) -> OSError:
    """``error``, or, raised by the OS naming no file (a full disk's flush), the same naming ``path``."""
    return OSError(error.errno, error.strerror, str(path)) if error.errno is not None and error.filename is None else error


def write_together(out_dir: Path, contents: Mapping[str, Callable[[Path], None]],
                   then: Callable[[], None] | None = None) -> None:
    """Writes the files of one report as a whole: ``contents[name]`` writes ``out_dir/name``'s
    content to the path it is given (a temporary name beside it that keeps its suffix: a plot's
    format is read from it); once every one is written, ``then`` runs (e.g. publishing the videos
    the report lists) and they are renamed in order, the last (report.json) marking the set
    complete. If any cannot be written (a full disk, Ctrl-C), none is left. An OSError naming no
    file is raised naming the one being written."""
    temporaries = {name: out_dir / f"{Path(name).stem}.partial{Path(name).suffix}" for name in contents}
    try:
        for name, write in contents.items():
            try:
                write(temporaries[name])
            except OSError as error:
                raise _naming(error, out_dir / name) from None
        if then is not None:
            then()
    except BaseException:
        for temporary in temporaries.values():
            temporary.unlink(missing_ok=True)
        raise
    for name, temporary in temporaries.items():
        temporary.replace(out_dir / name)


def write_text(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through ``path.partial``, removed if the write fails; OSError as
    ``Path.write_text``, one the OS raised naming no file (a full disk's flush) naming ``path``.
    ``path`` is a ``pathlib.Path`` or anything with its API, e.g. an ``etils.epath.Path``."""
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_text(text)
        partial.replace(path)
    except BaseException as error:
        if partial.exists():
            partial.unlink()
        if isinstance(error, OSError):
            raise _naming(error, path) from None
        raise


def write_json(path: Path, content: Any) -> None:
    """``content`` as indented JSON, written as ``write_text`` does."""
    write_text(path, json.dumps(content, indent=1) + "\n")


def unreadable_episodes(directory: str | os.PathLike, shard_files: Sequence[str | os.PathLike],
                        shard_lengths: Sequence[int], first: int, last: int, error: Exception) -> str:
    """The one-line message for episodes ``first..last`` (indices into a split whose shards, in order,
    are ``shard_files`` holding ``shard_lengths`` episodes) whose reading raised ``error``
    (array_record raises a bare RuntimeError for a shard that is missing, cut short or damaged,
    naming no file): the directory, the episodes and the shard files holding them."""
    ends = np.cumsum(shard_lengths)
    names = [Path(str(path)).name for path in shard_files]
    held = names[int(np.searchsorted(ends, first, side="right")):int(np.searchsorted(ends, last, side="right")) + 1]
    message = (str(error).strip().splitlines() or [""])[0][:200]
    episodes = f"episode {first}" if first == last else f"episodes {first}..{last}"
    return (f"{directory}: {episodes} cannot be read, a shard is missing or damaged "
            f"({', '.join(held)}: {type(error).__name__}: {message})")


@contextlib.contextmanager
def removing_created_folders(folder: Path, *, always: bool = False) -> Iterator[None]:
    """Runs the block; if it raises (with ``always``, in any case), removes the folders of ``folder``
    (it and its parents) that were missing before it and are empty now, so a failed command leaves
    its output folder as it found it (``always``: a probe that makes a folder to see whether it can)."""
    created = []
    path = Path(folder).absolute()
    while not path.exists() and not path.is_symlink():
        created.append(path)  # deepest first
        path = path.parent

    def remove() -> None:
        for path in created:
            try:
                path.rmdir()
            except FileNotFoundError:  # never made
                continue
            except OSError:  # not empty (another writer's files): keep it and its parents
                break

    try:
        yield
    except BaseException:
        remove()
        raise
    if always:
        remove()


@contextlib.contextmanager
def writing_into(folder: Path, claim: str, what: str, *, output: Path | None = None) -> Iterator[None]:
    """Makes ``folder`` (removed again, with the parents made for it, if the block fails and leaves it
    empty) and holds ``folder/claim`` while the block writes ``output`` (default ``folder``) there
    (``held``): a second command writing the same output at once is refused in one line naming it,
    instead of deleting or mixing in the first one's unfinished files."""
    folder = Path(folder)
    with removing_created_folders(folder):
        folder.mkdir(parents=True, exist_ok=True)
        with held(folder / claim, what, folder=output):
            yield


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextlib.contextmanager
def held(claim: Path, what: str, *, folder: Path | None = None) -> Iterator[None]:
    """Holds the file ``claim`` while the block runs, and removes it after: the file is locked
    (``flock``, which the system lets go when its holder ends, killed or not) and holds the
    holder's process id. A claim file left by a process that ended is taken over; so is one that
    names a running process without holding the lock (a container restarted after a kill runs its
    command as the same process id again). OSError ``"FOLDER: {what} (process N) ..."``
    (``folder``, default the claim's), one line, when another process holds it: two commands
    writing one folder at once would mix or replace each other's files; ``"FOLDER: cannot be
    written (REASON)"`` when the claim cannot be made there. On a filesystem without locks, the
    process id alone decides: a claim naming a running process other than this one is held."""
    where = folder or claim.parent
    for _ in range(100):  # again only when the file was let go or replaced while it was being locked
        try:
            descriptor = os.open(claim, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as error:  # a read-only or full folder: name it, not the claim's file
            if error.errno is None:
                raise
            raise OSError(f"{where}: cannot be written ({error.strerror})") from None
        try:
            locked = _lock(descriptor, claim) and _still_named(descriptor, claim)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
            os.close(descriptor)
            raise OSError(f"{where}: {what} (process {holder or 'starting'}) is writing there; wait for it or "
                          "choose another folder") from None
        except BaseException:
            os.close(descriptor)
            raise
        if not locked:
            os.close(descriptor)
            continue
        try:
            os.ftruncate(descriptor, 0)
            os.write(descriptor, f"{os.getpid()}\n".encode())
            break
        except BaseException as error:  # a full disk: no empty claim left behind (it kept its folder from going)
            claim.unlink(missing_ok=True)
            os.close(descriptor)
            if isinstance(error, OSError) and error.errno is not None:
                raise OSError(f"{where}: cannot be written ({error.strerror})") from None
            raise
    else:
        raise OSError(f"{claim}: keeps reappearing; {what} is starting there")
    try:
        yield
    finally:
        claim.unlink(missing_ok=True)  # before the lock goes: a process waiting on this file then sees it replaced
        os.close(descriptor)


def _lock(descriptor: int, claim: Path) -> bool:
    """True once ``descriptor`` holds the claim's lock; BlockingIOError while another process does.
    Without locks on this filesystem, the process id the file names decides (BlockingIOError when
    it is a running process other than this one)."""
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        raise
    except OSError:  # ENOLCK, EOPNOTSUPP: some network and FUSE filesystems
        holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
        if holder.isdigit() and int(holder) != os.getpid() and _running(int(holder)):
            raise BlockingIOError from None
        return True


def _still_named(descriptor: int, claim: Path) -> bool:
    """Whether ``claim`` still names the file ``descriptor`` locked: a holder ending removes the file
    before its lock goes, so a process that opened it meanwhile locks a file no longer in the folder."""
    try:
        return os.path.samestat(os.fstat(descriptor), os.stat(claim))
    except FileNotFoundError:
        return False


def sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, as hex (read in blocks: any size)."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def check_folder(path: Path, option: str) -> None:
    """Checks, before any work, that `path` (given as the CLI's `option`, e.g. "--out") is a writable
    folder or can be made one; else OSError, one line naming the option, the path and the fault.
    Folders it makes to find out are removed again."""
    path, absolute = Path(path), Path(path).absolute()
    try:
        if path.is_symlink() and not path.exists():
            raise OSError(f"{option} {path}: a symlink to nothing")
        existing = next(folder for folder in (absolute, *absolute.parents) if folder.exists())
    except OSError as error:  # a name too long, a folder on the way that cannot be searched
        raise error if not error.errno else OSError(f"{option} {path}: cannot be used ({error.strerror})") from None
    fault = ("not a folder" if not existing.is_dir()
             else "not writable" if not os.access(existing, os.W_OK | os.X_OK) else None)
    if fault:
        raise OSError(f"{option} {path}: " + (f"exists and is {fault}" if existing == absolute
                                               else f"cannot be created ({existing} is {fault})"))
    try:  # what access() cannot tell (a filesystem such as /proc, root's rights) making it does; the
        # command makes the folders again when it writes
        with removing_created_folders(absolute, always=True):
            absolute.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(f"{option} {path}: cannot be created ({error.strerror or error})") from None
