"""A GPU node is a plain torch environment (python with torch, numpy, scipy, h5py): the
restoration, calibration and twin packages, the simulated camera, the acquisition pipeline with
its HDF5 recording and scripts/gpu_bench.py must import and run there without pyserial, EPICS,
Qt, Dask or any other of the product's dependencies. The child process blocks those modules with a meta-path finder that raises
ImportError, imports every module of the packages and runs a tiny restoration and a tiny
pipeline."""
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# the list (serial, EPICS, Qt, Dask) and every other product dependency that is not
# torch, numpy, scipy or h5py (pyproject.toml), plus the test-only ones
BLOCKED = ("serial", "epics", "softioc", "p4p", "PyQt6", "pyqtgraph", "dask", "distributed",
           "caproto", "tifffile", "matplotlib", "skimage", "PIL", "ophyd", "ophyd_async",
           "bluesky", "pipython", "pco")

CHILD = textwrap.dedent("""
    import importlib, importlib.abc, importlib.util, pkgutil, sys, tempfile
    BLOCKED = {blocked!r}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is not installed on a GPU node")
            return None

    sys.meta_path.insert(0, Block())
    for name in BLOCKED:                      # nothing imported them before the finder
        assert name not in sys.modules, name

    import numpy as np
    import xinstrument.calibration, xinstrument.restoration, xinstrument.sim
    failed = []
    for pkg in (xinstrument.restoration, xinstrument.calibration, xinstrument.sim):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            try:
                importlib.import_module(info.name)
            except ImportError as exc:
                failed.append(f"{{info.name}}: {{exc}}")
    for name in ("drivers.camera.simulated", "xinstrument.acquisition",
                 "xinstrument.acquisition.pipeline", "xinstrument.acquisition.correction",
                 "xinstrument.acquisition.live_restoration", "xinstrument.storage",
                 "xinstrument.storage.writer", "xinstrument.profiles"):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            failed.append(f"{{name}}: {{exc}}")
    assert not failed, "imports failing on a GPU node: " + "; ".join(failed)

    spec = importlib.util.spec_from_file_location("gpu_bench", {bench!r})
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)            # the benchmark's own imports

    # a tiny restoration through the streaming hot path, against its float64 reference
    from xinstrument.profiles import find_profile
    from xinstrument.restoration import Restorer
    profile = find_profile("sim-yag200-5x")
    r = Restorer(profile, "wiener", device="cpu")
    frames = bench.random_frames(np.random.default_rng(1), 2, 64, 80)
    out = np.stack(list(r.stream(list(frames))))
    ref = r.reference(frames)
    assert out.shape == frames.shape and np.abs(out - ref).max() < 1e-4

    # a tiny live chain: simulated camera -> average -> correction -> restoration -> HDF5
    from drivers.camera.simulated import SimulatedCamera
    from xinstrument.acquisition.correction import FlatFieldCorrector
    from xinstrument.acquisition.pipeline import AcquisitionPipeline, HDF5Sink
    def render(exposure_s, roi, binning, n):
        return np.full((roi[2], roi[3]), 1000 + n % 7, np.uint16), {{}}
    cam = SimulatedCamera(render, sensor_shape=(64, 64), max_fps=200)
    cam.exposure_s = 0.005
    dark, flat = np.full((64, 64), 100, np.float32), np.full((64, 64), 2000, np.float32)
    corr = FlatFieldCorrector(dark, flat)
    path = tempfile.mkdtemp() + "/tiny.h5"
    sink = HDF5Sink(path, references=[(dark, 2, 1), (flat, 1, 1)])
    stats = AcquisitionPipeline(cam, n_average=2, corrector=corr, restorer=r,
                                sinks=[sink], n_outputs=3).run(timeout_s=60)
    assert stats.state == "completed", stats.table()
    from xinstrument.storage import ScanReader
    with ScanReader(path) as f:
        assert f.projections.shape[0] == 3 and f.n_restored == stats.frames_restored >= 1
    for name in BLOCKED:
        assert name not in sys.modules, name
    print("GPU-NODE-OK")
""")


def test_gpu_node_path_imports_and_runs_without_serial_epics_qt_dask():
    code = CHILD.format(blocked=BLOCKED, bench=str(ROOT / "scripts" / "gpu_bench.py"))
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                                            "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and "GPU-NODE-OK" in proc.stdout, proc.stderr[-4000:]


def test_the_block_really_blocks():
    """The finder must make a blocked import fail in the child (else the test above proves
    nothing); numpy, which a GPU node has, stays importable."""
    code = CHILD.split("for name in BLOCKED:")[0] + textwrap.dedent("""
        import numpy
        try:
            import serial
        except ImportError:
            print("BLOCKED-OK")
    """)
    code = code.format(blocked=BLOCKED, bench="")
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert "BLOCKED-OK" in proc.stdout, proc.stderr[-2000:]
