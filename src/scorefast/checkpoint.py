"""Files that are safe to write and safe to open: checkpoints, JSON, JSONL logs, and any regular file.

Writes are atomic (a temporary ``.NAME.XXXXXXXX.tmp`` next to the target, flushed and fsynced, then
``os.replace``), so a process killed mid-write or a full disk leaves the previous file intact;
`remove_stale_temporaries` clears what a killed writer left. Log lines are appended with one
``write`` on an ``O_APPEND`` descriptor, so a kill cannot tear a line in the middle of the file.
Checkpoints are read with ``torch.load(weights_only=True)``, which unpickles only tensors and plain
containers and never runs code. Nothing is opened that is not a regular file (a FIFO would block
forever). Every failure the user can cause is one `UserError` line naming the file and the reason.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .errors import UserError

FORMAT = "scorefast-checkpoint"
FORMAT_VERSION = 1

_TEMPORARY = re.compile(r"\A\..+\.[a-z0-9_]{8}\.tmp\Z")  # what tempfile.mkstemp(prefix=".NAME.", suffix=".tmp") makes
_ZIP_MAGIC = b"PK\x03\x04"


def display_path(path: str | os.PathLike) -> str:
    """A path as printable one-line text: undecodable bytes become \\xNN, control characters are escaped."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def error_reason(err: BaseException) -> str:
    """A short one-line reason: the OS's words for an OSError ("no space left on device"), else the message."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror[0].lower() + err.strerror[1:]
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:200]


def _kind_of(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def open_regular(path: str | os.PathLike, label: str) -> BinaryIO:
    """Open a regular file for binary reading; anything else is a UserError that starts with ``label``.

    The type is checked with stat before opening, so a FIFO or device is never opened (reading one
    can block forever); the open itself is non-blocking and re-checked, so a swap in between is caught.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if err.errno == errno.ENOENT and os.path.islink(path):
            raise UserError(f"{label}: is a broken symbolic link") from None
        if err.errno == errno.ELOOP:
            raise UserError(f"{label}: is a symbolic link loop") from None
        raise UserError(f"{label}: cannot be read ({error_reason(err)})") from None
    except ValueError:
        raise UserError(f"{label}: is not a usable path (it holds a NUL byte)") from None
    if not stat.S_ISREG(mode):
        raise UserError(f"{label}: is {_kind_of(mode)}, not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as err:
        raise UserError(f"{label}: cannot be read ({error_reason(err)})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UserError(f"{label}: is {_kind_of(mode)}, not a regular file")
    return os.fdopen(fd, "rb")


def _read_all(path: str | os.PathLike, label: str) -> bytes:
    with open_regular(path, label) as f:
        try:
            return f.read()
        except OSError as err:
            raise UserError(f"{label}: cannot be read ({error_reason(err)})") from None


# -- writing --------------------------------------------------------------------------------------

def os_error_in(err: BaseException) -> OSError | None:
    """The OSError an exception is or was raised while handling (torch's zip writer turns a full disk into a
    RuntimeError raised during its cleanup), or None."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


class WriteShield:
    """Holds back an "at once" stop while a file is being written: an exception raised into the middle of
    torch.save tears its zip writer (a RuntimeError at its end of file, or an abort in its destructor),
    which the atomic rename cannot undo. ``defer(stop)`` keeps ``stop`` until the outermost write ends."""

    def __init__(self):
        self.depth = 0
        self.pending: Callable[[], None] | None = None

    @contextmanager
    def writing(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if self.depth == 0 and self.pending is not None:
                stop, self.pending = self.pending, None
                stop()

    def defer(self, stop: Callable[[], None]) -> bool:
        """True (and ``stop`` kept for later) while a write is in progress, else False."""
        if self.depth:
            self.pending = stop
        return bool(self.depth)


WRITES = WriteShield()


def _limit(path: Path, name: str, default: int) -> int:
    """A file-system limit (``PC_NAME_MAX``, ``PC_PATH_MAX``) at the nearest existing folder of ``path``."""
    folder = next((p for p in path.absolute().parents if os.path.isdir(p)), Path("/"))
    try:
        return os.pathconf(folder, name)
    except (AttributeError, ValueError, OSError):
        return default


def check_path(path: str | Path, flag: str) -> Path:
    """Refuse a path the file system cannot hold, before anything is written: a name longer than its limit
    (255 bytes on most) or a whole path longer than its own (4096); a NUL byte."""
    out = Path(path)
    if "\x00" in str(out):
        raise UserError(f"{flag}: is not a usable path (it holds a NUL byte)")
    longest = max(out.parts, key=lambda part: len(os.fsencode(part)), default="")
    name_max, path_max = _limit(out, "PC_NAME_MAX", 255), _limit(out, "PC_PATH_MAX", 4096)
    if len(os.fsencode(longest)) > name_max:
        raise UserError(f"{flag} '{display_path(out)[:60]}...': the name '{display_path(longest)[:40]}...' is "
                        f"{len(os.fsencode(longest))} bytes, more than the file system's limit of {name_max}")
    if len(os.fsencode(out.absolute())) >= path_max:
        raise UserError(f"{flag} '{display_path(out)[:60]}...': the path is {len(os.fsencode(out.absolute()))} "
                        f"bytes, more than the file system's limit of {path_max - 1}")
    return out


def _inside(path: Path, inputs: Iterable[str | Path]) -> Path | None:
    """The input that ``path`` is (the same file) or lies under (an input folder), or None."""
    target = path.resolve()
    for given in map(Path, inputs):
        if not given.exists():
            continue
        if target == given.resolve() or (given.is_dir() and target.is_relative_to(given.resolve())) or \
                (path.exists() and os.path.samefile(path, given)):
            return given
    return None


def check_output(path: str | Path, flag: str = "--out", suffix: str | None = None, overwrite: bool = False,
                 inputs: Iterable[str | Path] = ()) -> Path:
    """The one rule for every file a command writes, checked before any work: a usable path with the expected
    suffix, in an existing folder; never an input of the same command (a file it reads, or a place inside a
    folder it reads), even with ``overwrite``; and only where nothing is unless ``overwrite`` (git's and
    torch.save's callers' rule: the user's data is never replaced without being asked)."""
    out = check_path(path, flag)
    if suffix is not None and out.suffix != suffix:
        raise UserError(f"{flag} '{display_path(out)}': expected a {suffix} file name")
    if not out.parent.is_dir():
        raise UserError(f"{flag} '{display_path(out)}': directory '{display_path(out.parent)}' does not exist")
    if out.is_dir():
        raise UserError(f"{flag} '{display_path(out)}' is a directory")
    source = _inside(out, inputs)
    if source is not None:
        raise UserError(f"{flag} '{display_path(out)}' would write over an input of this command "
                        f"('{display_path(source)}'); choose another {flag}")
    if os.path.lexists(out):
        if not overwrite:
            raise UserError(f"{flag} '{display_path(out)}' already exists; pass --overwrite to replace it")
        if out.exists() and not out.is_file():
            raise UserError(f"{flag} '{display_path(out)}' is {_kind_of(os.stat(out).st_mode)}, not a file to replace")
    return out


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object], what: str = "file") -> None:
    """Call ``write(file_object)`` on a temporary file next to ``path`` and rename it into place.

    On any failure (disk full, read-only or vanished directory, an exception in ``write``) the temporary
    file is removed and the previous ``path`` is left as it was; OS errors become
    ``UserError("cannot write <what> '<path>': <reason>")``. A stop asked for during the write (a second
    Ctrl-C) happens when it is done (``WRITES``).
    """
    with WRITES.writing():
        _write_and_rename(Path(path), write, what)


def _write_and_rename(path: Path, write: Callable[[BinaryIO], object], what: str) -> None:
    tmp = None
    try:
        path.parent.mkdir(exist_ok=True)  # its own folder only: a vanished run directory is an error, not rebuilt
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except (OSError, RuntimeError) as err:
        cause = os_error_in(err)
        if cause is None:
            raise
        raise UserError(f"cannot write {what} '{display_path(path)}': {error_reason(cause)}") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass  # the directory itself is gone or read-only: nothing is left to clean, or nothing can be


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete the ``.NAME.XXXXXXXX.tmp`` files a killed `atomic_write` left in ``directory`` and below.

    Call it only while no other process writes there (e.g. on resume, before training starts): a
    live writer's temporary file looks the same. Symbolic links are neither followed nor removed.
    Returns the removed paths, sorted.
    """
    removed = []
    for parent, _, names in os.walk(directory):
        for p in (Path(parent) / name for name in names if _TEMPORARY.match(name)):
            try:
                if not stat.S_ISREG(os.lstat(p).st_mode):
                    continue
                p.unlink()
            except FileNotFoundError:
                continue
            except OSError as err:
                reason = error_reason(err)
                raise UserError(f"cannot remove stale temporary file '{display_path(p)}': {reason}") from None
            removed.append(p)
    return sorted(removed)


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented, key-sorted JSON."""
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()),
                 what="JSON file")


def append_jsonl(path: str | Path, row: dict, what: str = "log") -> None:
    """Append ``row`` as one JSON line with a single ``os.write`` on an ``O_APPEND`` descriptor.

    The line is written whole or, on a short write or an error, cut back off, so the file never
    holds a partial line from this call; only a kill during the one ``write`` can tear the last line,
    which `read_jsonl` recognises. Not fsynced (logs are cheap to lose, slow to sync every line).
    """
    line = (json.dumps(row) + "\n").encode()
    label = f"cannot append to {what} '{display_path(path)}'"
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as err:
        raise UserError(f"{label}: {error_reason(err)}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UserError(f"{label}: is {_kind_of(info.st_mode)}, not a regular file")
        try:
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(errno.ENOSPC, f"only {written} of {len(line)} bytes written")
        except OSError as err:
            try:
                os.ftruncate(fd, info.st_size)
            except OSError:
                pass  # cannot cut it back either; read_jsonl will see a torn last line
            raise UserError(f"{label}: {error_reason(err)}") from None
    finally:
        os.close(fd)


# -- reading --------------------------------------------------------------------------------------

def _parse_json(raw: bytes, label: str) -> Any:
    """JSON from bytes, or a one-line UserError that tells truncated from garbled."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{label}: is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        if err.pos >= len(text.rstrip()) or err.msg.startswith("Unterminated string"):
            raise UserError(f"{label}: is truncated (the JSON ends early, line {err.lineno})") from None
        raise UserError(f"{label}: is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    except RecursionError:
        raise UserError(f"{label}: is not usable JSON (nested too deeply)") from None
    except ValueError as err:  # e.g. an integer longer than Python's 4300-digit conversion limit
        raise UserError(f"{label}: is not usable JSON ({error_reason(err)})") from None


def _json_type(obj: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if obj is None else names.get(type(obj), type(obj).__name__)


def read_json(path: str | Path, what: str) -> dict:
    """The JSON object in ``path``; missing, empty, truncated, non-UTF-8, invalid or non-object files
    are a UserError naming ``what`` (e.g. "config.json") and the path."""
    label = f"{what} '{display_path(path)}'"
    raw = _read_all(path, label)
    if not raw.strip():
        raise UserError(f"{label}: is empty ({len(raw)} bytes)")
    obj = _parse_json(raw, label)
    if not isinstance(obj, dict):
        raise UserError(f"{label}: holds {_json_type(obj)}, expected a JSON object")
    return obj


def read_jsonl(path: str | Path, what: str, repair: bool = False) -> list[dict]:
    """The JSON objects of a log written by `append_jsonl`, one per line (blank lines are skipped).

    A last line without its newline is the mark of a writer killed mid-write: if it is a whole JSON
    object it is kept, otherwise it is dropped. With ``repair`` the file is also fixed on disk (the
    newline added, or the torn line cut off), so later appends start on a line of their own. A bad
    line anywhere before the last is damage, not a kill: a UserError naming its line number.
    """
    label = f"{what} '{display_path(path)}'"
    raw = _read_all(path, label)
    *lines, tail = raw.split(b"\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            rows.append(_parse_json(line, f"{label}: line {number}"))
            if not isinstance(rows[-1], dict):
                raise UserError(f"{label}: line {number}: holds {_json_type(rows[-1])}, expected a JSON object")
    if not tail.strip():
        return rows
    try:
        last = _parse_json(tail, label)
    except UserError:
        last = None
    whole = isinstance(last, dict)
    if whole:
        rows.append(last)
    if repair:
        try:
            with open(path, "r+b") as f:
                if whole:
                    f.seek(0, os.SEEK_END)
                    f.write(b"\n")
                else:
                    f.truncate(len(raw) - len(tail))
        except OSError as err:
            raise UserError(f"{label}: cannot repair its torn last line ({error_reason(err)})") from None
    return rows


# -- checkpoints ----------------------------------------------------------------------------------

def save_checkpoint(path: str | Path, state: dict) -> None:
    """Atomically save a dict of tensors, numbers, strings and nested containers."""
    atomic_write(path, lambda f: torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **state}, f),
                 what="checkpoint")


def _check_archive(f: BinaryIO, size: int, label: str) -> None:
    """Refuse a file that is not an uncompressed zip whose entries fit in it (torch.save writes no other),
    so nothing torch allocates for a record can exceed the file's own size."""
    if size == 0:
        raise UserError(f"{label}: is empty (0 bytes), an interrupted write?")
    if f.read(len(_ZIP_MAGIC)) != _ZIP_MAGIC:
        raise UserError(f"{label}: not a scorefast checkpoint (no zip header)")
    try:
        entries = zipfile.ZipFile(f).infolist()
    except Exception as err:  # zipfile raises many types on a damaged directory
        raise UserError(f"{label}: truncated or corrupt ({error_reason(err)})") from None
    for e in entries:
        if e.compress_type != zipfile.ZIP_STORED or e.file_size != e.compress_size or e.file_size > size:
            raise UserError(f"{label}: corrupt (archive entry '{display_path(e.filename)[:80]}' declares "
                            f"{e.file_size} bytes in a {size}-byte file)")
    f.seek(0)


def _load_reason(err: BaseException) -> str:
    """The useful line of a torch.load failure (its weights_only refusal is three paragraphs)."""
    found = re.search(r"GLOBAL (.+?)(?: was not| whose module|$)", str(err), re.MULTILINE)
    if found:
        name = display_path(found.group(1))[:80]
        return f"refused, it would call '{name}' on load (a checkpoint holds only tensors and numbers)"
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in str(err).splitlines()]
    useful = [line for line in lines if line and not line.startswith(boilerplate)]
    return f"truncated or corrupt ({error_reason(Exception(useful[0] if useful else type(err).__name__))})"


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint without executing code; one clear error for anything else."""
    label = f"checkpoint '{display_path(path)}'"
    with open_regular(path, label) as f:
        _check_archive(f, os.fstat(f.fileno()).st_size, label)
        try:
            state = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated zip, foreign pickle, code-executing payload...
            raise UserError(f"{label}: {_load_reason(err)}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{label}: not a scorefast checkpoint")
    version = state.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        shown = display_path(repr(version))[:40]
        raise UserError(f"{label}: format version {shown} is not supported by this scorefast "
                        f"(expects {FORMAT_VERSION})")
    return state
