"""Second-process SWMR follow, kill -9 during recording, disk faults, unwritable folders."""
from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from xinstrument.storage import ScanReader, ScanWriter, StorageError, recover

SHAPE = (32, 48)
TIMEOUT_S = 60.0


def _frame(i: int) -> np.ndarray:
    # Distinct, checkable content per frame index.
    return (np.arange(SHAPE[0] * SHAPE[1], dtype=np.uint32).reshape(SHAPE) * 7 + i * 1000
            ).astype(np.uint16)


def _spawn(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _readline(proc: subprocess.Popen, deadline: float) -> str:
    """Next stdout line of proc, failing (never hanging) at the deadline."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                pytest.fail(f"subprocess gave no output in time; stderr: {proc.stderr.read()}")
            if sel.select(timeout=left):
                line = proc.stdout.readline()
                if not line:
                    proc.wait(5)
                    pytest.fail(f"subprocess ended (rc={proc.returncode}): {proc.stderr.read()}")
                return line.strip()
    finally:
        sel.close()


FOLLOWER = """
    import sys, time, hashlib
    from xinstrument.storage import ScanReader
    path, n_expected = sys.argv[1], int(sys.argv[2])
    deadline = time.monotonic() + 60
    with ScanReader(path, swmr=True) as r:
        seen = 0
        while seen < n_expected and time.monotonic() < deadline:
            r.refresh()
            for i, frame, md in r.frames(start=seen):
                print(i, int(frame.astype("int64").sum()), md["image_key"], flush=True)
                seen = i + 1
            time.sleep(0.01)
"""


def test_second_process_follows_live(tmp_path):
    path = tmp_path / "live.h5"
    n = 6
    keys = [2, 1, 0, 0, 0, 0]
    with ScanWriter(path, SHAPE, "uint16") as w:
        follower = _spawn(FOLLOWER, str(path), str(n))
        try:
            deadline = time.monotonic() + TIMEOUT_S
            for i in range(n):
                w.append(_frame(i), image_key=keys[i], theta_deg=float(i))
                # The follower must see this frame while the writer is still recording.
                idx, total, key = (int(v) for v in _readline(follower, deadline).split())
                assert idx == i
                assert total == int(_frame(i).astype("int64").sum())
                assert key == keys[i]
                assert not w.closed
        finally:
            follower.wait(TIMEOUT_S)
    assert follower.returncode == 0, follower.stderr.read()
    with ScanReader(path) as r:
        assert r.complete and r.n_frames == n


RECORDER = """
    import sys, time
    import numpy as np
    from xinstrument.storage import ScanWriter
    shape = (32, 48)
    def frame(i):
        return (np.arange(shape[0] * shape[1], dtype=np.uint32).reshape(shape) * 7
                + i * 1000).astype(np.uint16)
    w = ScanWriter(sys.argv[1], shape, "uint16", restored=True,
                   compression=sys.argv[2] if sys.argv[2] != "none" else None)
    i = 0
    while True:
        w.append(frame(i), image_key=0, theta_deg=0.5 * i, voltage_kv=50.0)
        w.append_restored(frame(i).astype("float32") / 2, source_index=i, method="wiener",
                          profile="p")
        print(i, flush=True)
        i += 1
        time.sleep(0.005)
"""


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_kill_9_keeps_every_flushed_frame(tmp_path, compression):
    path = tmp_path / "crash.h5"
    rec = _spawn(RECORDER, str(path), compression)
    deadline = time.monotonic() + TIMEOUT_S
    last = -1
    try:
        while last < 8:
            last = int(_readline(rec, deadline))
    finally:
        rec.send_signal(signal.SIGKILL)
        rec.wait(TIMEOUT_S)
    assert rec.returncode == -signal.SIGKILL

    # A plain HDF5 open refuses the file (the writer never closed it) ...
    with pytest.raises(OSError):
        h5py.File(path, "r")
    # ... but ScanReader reads every frame the recorder reported as written.
    with ScanReader(path) as r:
        assert not r.complete
        n = r.n_frames
        assert n >= last + 1
        for i in range(n):
            np.testing.assert_array_equal(r.frame(i), _frame(i))
        np.testing.assert_array_equal(r.theta_deg, 0.5 * np.arange(n))
        assert r.n_restored >= last + 1
        np.testing.assert_array_equal(r.restored[last], _frame(last).astype("float32") / 2)

    # recover() makes it an ordinary, final file that says it is incomplete.
    assert recover(path) == n
    with h5py.File(path, "r") as f:
        assert not f["/entry"].attrs["xi_complete"]
        assert "interrupted" in f["/entry"].attrs["xi_reason"]
        assert f["/exchange/data"].shape == (n, *SHAPE)
        np.testing.assert_array_equal(f["/exchange/data"][n - 1], _frame(n - 1))
    with ScanReader(path) as r:
        assert not r.swmr and not r.complete and r.n_frames == n
    assert recover(path) == n  # idempotent


FILE_LIMITED = """
    import resource, signal, sys
    import numpy as np
    from xinstrument.storage import ScanWriter, StorageError
    # A real write fault: the kernel refuses to grow the file past this size (EFBIG).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    shape = (128, 128)
    w = ScanWriter(sys.argv[1], shape, "uint16")
    i = 0
    try:
        while i < 1000:
            w.append(np.full(shape, i, np.uint16))
            i += 1
    except StorageError as exc:
        print("ERROR", i, exc, flush=True)
    try:
        w.close(complete=False, reason="disk fault")
    except StorageError as exc:
        print("CLOSE", exc, flush=True)
"""


def test_write_fault_raises_storage_error_and_keeps_flushed_frames(tmp_path):
    path = tmp_path / "limited.h5"
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(FILE_LIMITED), str(path),
                           str(600_000)], capture_output=True, text=True, timeout=TIMEOUT_S,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    err = [ln for ln in lines if ln.startswith("ERROR")]
    assert err, proc.stdout + proc.stderr
    _, n_ok, message = err[0].split(" ", 2)
    n_ok = int(n_ok)
    assert n_ok >= 5
    assert "limited.h5" in message and "writing frame" in message
    assert "file size limit" in message
    # The failed close left space reserved past the real end of the file: the reader says so
    # and names the remedy instead of failing obscurely.
    try:
        ScanReader(path).close()
    except StorageError as exc:
        assert "limited.h5" in str(exc) and "recover()" in str(exc)
    assert recover(path) >= n_ok
    with h5py.File(path, "r") as f:
        assert not f["/entry"].attrs["xi_complete"]
    with ScanReader(path) as r:
        assert not r.complete
        assert r.n_frames >= n_ok
        for i in range(n_ok):
            assert (r.frame(i) == i).all()


@pytest.mark.skipif(not hasattr(os, "setuid"), reason="needs POSIX users")
def test_unwritable_folder_gives_storage_error():
    # A world-traversable parent so only the folder's own permission stops the writer.
    parent = Path(tempfile.mkdtemp(prefix="xi-storage-"))
    parent.chmod(0o755)
    folder = parent / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    target = folder / "scan.h5"
    code = f"""
        import os
        from xinstrument.storage import ScanWriter, StorageError
        if os.getuid() == 0:
            os.setgid(65534); os.setuid(65534)  # root ignores folder permissions
        try:
            ScanWriter({str(target)!r}, (8, 8), "uint16")
        except StorageError as exc:
            print("StorageError:", exc)
    """
    try:
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                              capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    finally:
        folder.chmod(0o755)
        shutil.rmtree(parent)
    assert proc.stdout.startswith("StorageError:"), proc.stdout + proc.stderr
    assert "scan.h5" in proc.stdout and "permission denied" in proc.stdout.lower()
