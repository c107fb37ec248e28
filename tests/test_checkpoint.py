"""Safe file I/O: atomic writes under failure, stale temporaries, JSON and JSONL logs, checkpoints."""

import errno
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile

import pytest
import torch

from scorefast import checkpoint
from scorefast.checkpoint import (
    FORMAT,
    append_jsonl,
    atomic_write,
    load_checkpoint,
    read_json,
    read_jsonl,
    remove_stale_temporaries,
    save_checkpoint,
    write_json,
)
from scorefast.errors import UserError


def _raise(code):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return fail


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------------------------
# atomic_write: every failure leaves the previous file and no temporary behind


@pytest.mark.parametrize(
    "inject, reason",
    [
        ("fsync", "no space left on device"),
        ("write", "no space left on device"),
        ("mkstemp", "read-only file system"),
        ("replace", "no such file or directory"),
    ],
)
def test_atomic_write_failure_keeps_previous_file(tmp_path, monkeypatch, inject, reason):
    path = tmp_path / "net.pt"
    save_checkpoint(path, {"step": 1})
    before, listing = path.read_bytes(), _listing(tmp_path)

    def write(f):
        f.write(b"x" * 100000)
        if inject == "write":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if inject == "fsync":
        monkeypatch.setattr(os, "fsync", _raise(errno.ENOSPC))
    elif inject == "mkstemp":
        monkeypatch.setattr(tempfile, "mkstemp", _raise(errno.EROFS))
    elif inject == "replace":
        monkeypatch.setattr(os, "replace", _raise(errno.ENOENT))
    with pytest.raises(UserError) as info:
        atomic_write(path, write, what="checkpoint")
    assert str(info.value) == f"cannot write checkpoint '{path}': {reason}"
    assert path.read_bytes() == before and _listing(tmp_path) == listing
    assert load_checkpoint(path)["step"] == 1


def test_atomic_write_into_a_vanished_directory(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(UserError, match=f"cannot write file '{run / 'a.json'}': no such file or directory$"):
        atomic_write(run / "a.json", lambda f: shutil.rmtree(run))
    assert _listing(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_atomic_write_into_a_read_only_directory(tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        with pytest.raises(UserError, match="permission denied$"):
            write_json(tmp_path / "ro" / "summary.json", {"a": 1})
    finally:
        (tmp_path / "ro").chmod(0o755)


@pytest.mark.parametrize("error", [RuntimeError("bug in the writer"), KeyboardInterrupt()])
def test_atomic_write_other_exceptions_propagate_and_clean_up(tmp_path, error):
    path = tmp_path / "samples.npy"
    path.write_bytes(b"old")

    def write(f):
        f.write(b"new, half written")
        raise error

    with pytest.raises(type(error)):
        atomic_write(path, write)
    assert path.read_bytes() == b"old" and _listing(tmp_path) == ["samples.npy"]


def test_killed_writer_leaves_a_temporary_that_remove_stale_temporaries_clears(tmp_path):
    """A writer killed by SIGKILL cannot clean up; the run directory's resume removes what it left."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    save_checkpoint(run / "checkpoints" / "net-0.pt", {"step": 5})
    script = (
        "import os, signal, sys\n"
        "from scorefast.checkpoint import atomic_write\n"
        "def write(f):\n"
        "    f.write(b'half'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
        "atomic_write(sys.argv[1], write)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(run / "checkpoints" / "net-0.pt")])
    assert proc.returncode == -9
    left = [p for p in (run / "checkpoints").iterdir() if p.name != "net-0.pt"]
    assert len(left) == 1 and left[0].name.startswith(".net-0.pt.") and left[0].read_bytes() == b"half"
    keep = [run / ".notes.tmp", run / "a.12345678.tmp", run / "checkpoints" / "net-1.pt"]
    for p in keep:
        p.write_bytes(b"user file")
    (run / ".link.abcdefgh.tmp").symlink_to(run / "checkpoints" / "net-1.pt")
    assert remove_stale_temporaries(run) == left
    assert all(p.exists() for p in keep) and (run / ".link.abcdefgh.tmp").is_symlink()
    assert load_checkpoint(run / "checkpoints" / "net-0.pt")["step"] == 5
    assert remove_stale_temporaries(run) == [] and remove_stale_temporaries(tmp_path / "missing") == []


# ------------------------------------------------------------------------------------------------
# read_json


def test_read_json_round_trip(tmp_path):
    obj = {"run_format": 1, "config": {"lr": 1e-3, "name": "caf\u00e9", "steps": [1, 2]}}
    write_json(tmp_path / "config.json", obj)
    assert read_json(tmp_path / "config.json", "config.json") == obj


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "cannot be read (no such file or directory)"),
        (b"", "is empty (0 bytes)"),
        (b"  \n", "is empty (3 bytes)"),
        (b"[]", "holds an array, expected a JSON object"),
        (b"null", "holds null, expected a JSON object"),
        (b'{"run_format": 1, "config": {"lr"', "is truncated (the JSON ends early, line 1)"),
        (b'{"name": "unterminated', "is truncated"),
        (b'{"a": 1}\ngarbage', "is not valid JSON (Extra data at line 2 column 1)"),
        (b'{"a": tru, "b": 2}', "is not valid JSON (Expecting value at line 1 column 7)"),
        (b'{"a": "\xff\xfe"}', "is not UTF-8 text (byte 0xff at offset 7)"),
        (b"[" * 100000, "is not usable JSON (nested too deeply)"),
        (b'{"a": ' + b"1" * 5000 + b"}", "is not usable JSON (Exceeds the limit (4300 digits)"),
    ],
)
def test_read_json_refuses_bad_files_in_one_line(tmp_path, content, expected):
    path = tmp_path / "config.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError) as info:
        read_json(path, "config.json")
    assert str(info.value).startswith(f"config.json '{path}': {expected}"), str(info.value)
    assert "\n" not in str(info.value)


def test_nul_byte_in_a_path_is_a_user_error(tmp_path):
    for read in (lambda p: read_json(p, "config.json"), load_checkpoint, lambda p: read_jsonl(p, "metrics log")):
        with pytest.raises(UserError, match="holds a NUL byte"):
            read(f"{tmp_path}/a\x00b")


@pytest.mark.timeout(20)
def test_read_json_refuses_fifo_and_directory(tmp_path):
    os.mkfifo(tmp_path / "summary.json")
    with pytest.raises(UserError, match="is a named pipe"):
        read_json(tmp_path / "summary.json", "summary.json")
    with pytest.raises(UserError, match="is a directory, not a regular file"):
        read_json(tmp_path, "summary.json")


# ------------------------------------------------------------------------------------------------
# JSONL logs


def test_jsonl_round_trip_and_blank_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": i, "loss": 1.0 / (i + 1), "note": "line\nbreak"} for i in range(5)]
    for row in rows:
        append_jsonl(path, row, "metrics log")
    assert path.read_bytes().count(b"\n") == 5
    assert read_jsonl(path, "metrics log") == rows
    path.write_bytes(path.read_bytes() + b"\n  \n")
    assert read_jsonl(path, "metrics log") == rows


def test_torn_last_line_is_dropped_and_repaired(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for i in range(3):
        append_jsonl(path, {"step": i})
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"step": 3, "lo')  # killed during the fourth write
    assert read_jsonl(path, "metrics log") == [{"step": i} for i in range(3)]
    assert path.read_bytes().endswith(b'"lo')  # reading alone changes nothing
    assert read_jsonl(path, "metrics log", repair=True) == [{"step": i} for i in range(3)]
    assert path.read_bytes() == whole
    append_jsonl(path, {"step": 3})
    assert read_jsonl(path, "metrics log") == [{"step": i} for i in range(4)]


def test_whole_last_line_without_newline_is_kept_and_repaired(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 0}\n{"step": 1}')
    assert read_jsonl(path, "metrics log", repair=True) == [{"step": 0}, {"step": 1}]
    append_jsonl(path, {"step": 2})
    assert read_jsonl(path, "metrics log") == [{"step": 0}, {"step": 1}, {"step": 2}]


@pytest.mark.parametrize(
    "middle, expected",
    [
        (b'{"step": 1', "line 2: is truncated"),
        (b"\xff\xfe", "line 2: is not UTF-8 text"),
        (b"[1, 2]", "line 2: holds an array, expected a JSON object"),
        (b"garbage", "line 2: is not valid JSON"),
    ],
)
def test_damage_in_the_middle_names_the_line(tmp_path, middle, expected):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 0}\n' + middle + b'\n{"step": 2}\n')
    with pytest.raises(UserError) as info:
        read_jsonl(path, "metrics log", repair=True)
    assert str(info.value).startswith(f"metrics log '{path}': {expected}") and "\n" not in str(info.value)
    assert path.read_bytes().endswith(b'{"step": 2}\n')  # damage is reported, never "repaired" away


@pytest.mark.parametrize("short", [False, True])
def test_failed_append_leaves_no_partial_line(tmp_path, monkeypatch, short):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"step": 0})
    before = path.read_bytes()
    real_write = os.write

    def failing_write(fd, data):
        if short:
            return real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(UserError, match=f"cannot append to metrics log '{path}': (no space left on device|only)"):
        append_jsonl(path, {"step": 1, "loss": 0.5}, "metrics log")
    monkeypatch.undo()
    assert path.read_bytes() == before


@pytest.mark.timeout(20)
def test_append_refuses_a_fifo(tmp_path):
    os.mkfifo(tmp_path / "metrics.jsonl")
    with pytest.raises(UserError, match="is a named pipe|no such device"):
        append_jsonl(tmp_path / "metrics.jsonl", {"step": 0})


# ------------------------------------------------------------------------------------------------
# Checkpoints


class _Reduce:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def test_checkpoint_round_trip(tmp_path):
    state = {"model": {"w": torch.randn(3, 4)}, "step": 7, "fit": {"seconds": 1.5}, "done": True}
    save_checkpoint(tmp_path / "net.pt", state)
    loaded = load_checkpoint(tmp_path / "net.pt")
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["step"] == 7 and loaded["done"]
    assert loaded["format"] == FORMAT and loaded["format_version"] == checkpoint.FORMAT_VERSION


@pytest.mark.parametrize("how", ["torch.save", "plain pickle", "pickle inside a zip"])
def test_code_running_checkpoint_is_refused_and_not_run(tmp_path, how):
    marker, control = tmp_path / "MARKER", tmp_path / "CONTROL"

    def write(path, m):
        state = {"format": FORMAT, "format_version": 1, "x": _Reduce(os.system, f"touch {m}")}
        if how == "torch.save":
            torch.save(state, path)
        elif how == "plain pickle":
            path.write_bytes(pickle.dumps(state))
        else:
            buf = io.BytesIO()
            torch.save({"format": FORMAT}, buf)
            with zipfile.ZipFile(buf) as src, zipfile.ZipFile(path, "w") as dst:
                for info in src.infolist():
                    data = pickle.dumps(state, protocol=2) if info.filename.endswith("data.pkl") else src.read(info)
                    dst.writestr(info.filename, data)

    write(tmp_path / "evil.pt", marker)
    with pytest.raises(UserError) as info:
        load_checkpoint(tmp_path / "evil.pt")
    msg = str(info.value)
    assert msg.startswith(f"checkpoint '{tmp_path / 'evil.pt'}': ") and "\n" not in msg
    assert ("refused, it would call 'posix.system'" in msg) or "no zip header" in msg
    assert not marker.exists()
    write(tmp_path / "control.pt", control)  # the payload is live: an unsafe loader runs it
    torch.load(tmp_path / "control.pt", weights_only=False) if how != "plain pickle" else pickle.loads(
        (tmp_path / "control.pt").read_bytes())
    assert control.exists()


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda p: None, "cannot be read (no such file or directory)"),
        (lambda p: p.write_bytes(b""), "is empty (0 bytes), an interrupted write?"),
        (lambda p: p.write_bytes(b"not a zip at all"), "not a scorefast checkpoint (no zip header)"),
        (lambda p: os.mkfifo(p), "is a named pipe (FIFO), not a regular file"),
        (lambda p: p.mkdir(), "is a directory, not a regular file"),
        (lambda p: torch.save([1, 2], p), "not a scorefast checkpoint"),
        (lambda p: torch.save({"format": FORMAT, "format_version": 99}, p), "format version 99 is not supported"),
        (lambda p: torch.save({"format": FORMAT, "format_version": torch.ones(3)}, p), "format version tensor"),
        (lambda p: torch.save({"format": FORMAT, "format_version": True}, p), "format version True"),
        (lambda p: torch.save({"format": torch.ones(2)}, p), "not a scorefast checkpoint"),
    ],
)
def test_bad_checkpoints_are_one_line_errors(tmp_path, make, expected):
    path = tmp_path / "net.pt"
    make(path)
    with pytest.raises(UserError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"checkpoint '{path}': {expected}"), str(info.value)
    assert "\n" not in str(info.value)


def test_truncated_checkpoints_are_one_line_errors(tmp_path):
    save_checkpoint(tmp_path / "net.pt", {"model": {"w": torch.randn(64, 64)}, "step": 3})
    whole = (tmp_path / "net.pt").read_bytes()
    for cut in (4, 100, len(whole) // 2, len(whole) - 22, len(whole) - 1):
        (tmp_path / "cut.pt").write_bytes(whole[:cut])
        with pytest.raises(UserError, match="cut.pt': truncated or corrupt") as info:
            load_checkpoint(tmp_path / "cut.pt")
        assert "\n" not in str(info.value)


def test_archive_entry_larger_than_the_file_is_refused_before_torch(tmp_path):
    save_checkpoint(tmp_path / "net.pt", {"step": 3})
    raw = bytearray((tmp_path / "net.pt").read_bytes())
    central = raw.rindex(b"PK\x01\x02")  # first central-directory entry: sizes at offsets 20 and 24
    raw[central + 20 : central + 28] = (2**31).to_bytes(4, "little") * 2
    (tmp_path / "big.pt").write_bytes(bytes(raw))
    with pytest.raises(UserError, match="big.pt': corrupt \\(archive entry .* declares 2147483648 bytes"):
        load_checkpoint(tmp_path / "big.pt")


def test_save_checkpoint_disk_full_names_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", _raise(errno.ENOSPC))
    with pytest.raises(UserError, match=f"^cannot write checkpoint '{tmp_path / 'net.pt'}': no space left on device$"):
        save_checkpoint(tmp_path / "net.pt", {"step": 1})
    assert _listing(tmp_path) == []


def test_json_is_written_sorted_and_indented(tmp_path):
    write_json(tmp_path / "s.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "s.json").read_text() == json.dumps({"a": [1, 2], "b": 1}, indent=2) + "\n"
