"""Writing output fails: a full disk, a read-only or a vanished run directory. One clear line, the previous
checkpoint intact, no half-written file left behind, and the run resumes once the cause is gone."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import scorefast
from scorefast import checkpoint as ckpt_module
from scorefast.checkpoint import load_checkpoint
from scorefast.errors import UserError

TINY = dict(data="moons", n_data=400, batch_size=32, width=16, eval_every=1000, eval_samples=50, eval_steps=5,
            ckpt_every=10)


def leftovers(run: Path) -> list[Path]:
    return [p for p in run.rglob("*.tmp")]


@pytest.mark.parametrize("code, reason", [(errno.ENOSPC, "no space left on device"),
                                          (errno.EROFS, "read-only file system")])
def test_a_failing_checkpoint_write_is_one_line_and_keeps_the_previous_one(tmp_path, monkeypatch, code, reason):
    """The OS refuses the third checkpoint (injected at fsync, the last step before the rename)."""
    run = tmp_path / "run"
    calls = {"n": 0}
    real = os.fsync

    def failing(fd):
        calls["n"] += 1
        if calls["n"] >= 4:  # config.json, then checkpoints at steps 10 and 20 succeed
            raise OSError(code, os.strerror(code))
        real(fd)

    monkeypatch.setattr(ckpt_module.os, "fsync", failing)
    with pytest.raises(UserError) as err:
        scorefast.train(scorefast.Config(out=str(run), steps=100, **TINY), progress=False)
    assert f"cannot write checkpoint '{run / 'checkpoints' / 'net-0.pt'}'" in str(err.value)
    assert reason in str(err.value) and "\n" not in str(err.value)
    assert load_checkpoint(run / "checkpoints" / "net-0.pt")["step"] == 20
    assert not leftovers(run)
    monkeypatch.setattr(ckpt_module.os, "fsync", real)  # space freed, file system writable again
    scorefast.train(scorefast.Config(out=str(run), steps=40, **TINY), resume=True, progress=False)
    assert load_checkpoint(run / "checkpoints" / "net-0.pt")["step"] == 40


@pytest.mark.slow
def test_a_really_full_disk(tmp_path):
    """A 1 MB tmpfs (needs root and a kernel that lets it mount one; skipped otherwise): the run fills it."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root, or not allowed)")
    try:
        run = mount / "run"
        r = subprocess.run([sys.executable, "-m", "scorefast.cli", "train", "--data", "moons", "--out", str(run),
                            "--steps", "200", "--ckpt-every", "20", "--width", "256", "--n-data", "400",
                            "--batch-size", "32", "--eval-every", "1000", "--quiet"],
                           capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
        assert r.returncode == 2, r.stderr
        assert "no space left on device" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        if (run / "checkpoints" / "net-0.pt").exists():
            load_checkpoint(run / "checkpoints" / "net-0.pt")  # whatever is there is whole
        assert not leftovers(run)
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.slow
def test_a_vanished_run_directory_stops_the_run_instead_of_being_rebuilt(tmp_path):
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "scorefast.cli", "train", "--data", "moons", "--out", str(run),
                          "--steps", "100000", "--ckpt-every", "50", "--n-data", "400", "--batch-size", "32",
                          "--width", "16", "--eval-every", "100000", "--quiet"], stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not (run / "checkpoints" / "net-0.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    shutil.rmtree(run)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "cannot" in err and len(err.strip().splitlines()) == 1
    assert not run.exists()
