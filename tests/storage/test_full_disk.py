"""A full disk while recording: a clean StorageError (no crash), and every frame reported
written stays readable (directly, or after ``recover()``).

The disk is a real 3 MiB tmpfs mounted for the test (ENOSPC from the kernel, as on a full data
disk); the recording runs in a child process so that a crash in the HDF5 library would show as
a failed child instead of taking pytest down. Skipped only where mounting is not permitted.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from xinstrument.storage import ScanReader, StorageError, recover

CHILD = r"""
import sys
import numpy as np
from xinstrument.acquisition.frame import Frame, ReferenceSet
from xinstrument.storage import StorageError
from xinstrument.storage.sink import RecordingSink

path = sys.argv[1]
shape = (128, 128)
refs = ReferenceSet(np.full(shape, 100.0, np.float32), np.full(shape, 1100.0, np.float32))
sink = RecordingSink(path, shape, corrected=True, metadata={"title": "full disk"})
written = 0
try:
    for i in range(10_000):
        raw = np.full(shape, 100.0 + i, np.float32)
        sink.write(Frame(data=refs.correct(raw), raw=raw, corrected=True, references=refs,
                         index=i))
        written = i + 1
except StorageError as exc:
    print("ERROR", written, str(exc).replace("\n", " "))
try:
    sink.close(complete=False, reason="disk full")
except StorageError as exc:
    print("CLOSE", str(exc).replace("\n", " "))
print("WRITTEN", written)
"""


@pytest.fixture()
def small_disk():
    mnt = Path(tempfile.mkdtemp(prefix="xi-full-disk-"))
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                              capture_output=True, text=True, check=False)
    except FileNotFoundError:
        proc = None
    if proc is None or proc.returncode != 0:
        mnt.rmdir()
        pytest.skip("cannot mount a small tmpfs here (needs root and mount permission): "
                    + (proc.stderr.strip() if proc is not None else "no mount command"))
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        with contextlib.suppress(OSError):
            mnt.rmdir()


def test_full_disk_gives_a_clean_error_and_keeps_what_was_written(small_disk, tmp_path):
    path = small_disk / "scan.h5"
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD), str(path)],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert proc.returncode == 0, proc.stderr[-2000:]          # no crash, no traceback
    out = proc.stdout.splitlines()
    err = [ln for ln in out if ln.startswith("ERROR")]
    assert err, proc.stdout
    _, n_ok, message = err[0].split(" ", 2)
    n_ok = int(n_ok)
    assert n_ok >= 5 and "scan.h5" in message
    assert "No space left on device" in message or "disk" in message.lower(), message
    assert "remain readable" in message
    # copy off the full disk, then read what was reported written
    copy = tmp_path / "scan.h5"
    copy.write_bytes(path.read_bytes())
    try:
        ScanReader(copy).close()
    except StorageError as exc:
        assert "recover()" in str(exc)
    assert recover(copy) >= n_ok
    with ScanReader(copy) as r:
        assert not r.complete and r.n_frames >= n_ok + 2            # references + frames
        keys = r.frame_metadata["image_key"]
        assert list(keys[:2]) == [2, 1]
        proj = np.flatnonzero(keys == 0)[:n_ok]
        for k, i in enumerate(proj):
            assert (r.frame(int(i)) == 100.0 + k).all()
        assert r.n_corrected >= n_ok - 1
        np.testing.assert_allclose(r.corrected[0], 0.0, atol=1e-6)
