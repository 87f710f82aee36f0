"""The file checks every client's scan files must pass, with real readers.

- ``nxvalidate -a NXtomo``: no errors;
- nexusformat loads it and finds the default NXdata; silx sees every NXdata as valid;
- nxtomo (ESRF) loads the NXtomo entry: frames, image keys, angles, pixel size;
- Data Exchange: the PyPI package named ``dxchange`` is an unrelated placeholder, so the APS
  library's ``read_aps_32id`` + ``normalize`` are done here as they do it with h5py:
  ``/exchange/data``, ``data_white``, ``data_dark``, ``theta``;
  ``(data - mean(dark)) / (mean(white) - mean(dark))`` must be transmission in 0..1 (within the
  noise) and ``-log`` finite everywhere;
- every stack says whether it is corrected, and the corrected stack matches the raw frames and
  the references it names.

Imported by the tests of each client (API plans, CLI, GUI, IOC) as ``scanfile_checks``.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from xinstrument.storage import ScanReader

NXVALIDATE = Path(sys.executable).with_name("nxvalidate")


# ----------------------------------------------------------------------------- file checks
def _nxvalidate_errors(path: Path) -> int:
    out = subprocess.run([str(NXVALIDATE), "-a", "NXtomo", "-e", str(path)],
                         capture_output=True, text=True, timeout=120, check=False)
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)
    m = re.search(r"Total number of errors: (\d+)", text)
    assert m, text
    return int(m.group(1))


def _dxchange_normalised(path: Path):
    """What dxchange.read_aps_32id + dxchange/tomopy normalize give, done with h5py."""
    with h5py.File(path, "r") as f:
        ex = f["/exchange"]
        proj = ex["data"][...].astype(np.float32)
        flat = ex["data_white"][...].astype(np.float32)
        dark = ex["data_dark"][...].astype(np.float32)
        theta = np.deg2rad(ex["theta"][...])
    assert theta.shape[0] == proj.shape[0]
    if proj.shape[0] == 0:
        return None
    assert flat.shape[0] and dark.shape[0], "projections without white or dark fields"
    dark_m, flat_m = dark.mean(axis=0), flat.mean(axis=0)
    denom = flat_m - dark_m
    denom[denom < 1e-6] = 1e-6        # tomopy.normalize's cutoff of the denominator
    return (proj - dark_m) / denom


def check_scan_file(path: Path, *, nxdata=("/entry/data",)) -> dict:
    path = Path(path)
    assert _nxvalidate_errors(path) == 0
    from nexusformat.nexus import nxload
    root = nxload(str(path))
    default = root.get_default()
    assert default is not None and default.nxsignal is not None
    import silx.io
    from silx.io.nxdata import is_valid_nxdata
    with silx.io.open(str(path)) as f:
        for g in nxdata:
            assert is_valid_nxdata(f[g]), g
    from nxtomo import NXtomo
    nx = NXtomo().load(str(path), "entry")
    with ScanReader(path) as r:
        keys = r.frame_metadata["image_key"]
        assert [int(k.value) for k in nx.instrument.detector.image_key_control] == list(keys)
        assert not r.is_corrected("measured")          # the product records camera counts
        info = {"n": r.n_frames, "keys": list(keys), "metadata": r.metadata}
        if r.has_corrected and r.n_corrected:
            assert r.is_corrected("corrected")
            cm = r.corrected_metadata
            for k, (s, d, fl) in enumerate(zip(cm["source_index"], cm["dark_index"],
                                               cm["flat_index"])):
                assert keys[s] == 0 and keys[d] == 2 and keys[fl] == 1 and d < s and fl < s
                expect = (r.frame(int(s)) - r.frame(int(d))) / (r.frame(int(fl))
                                                                - r.frame(int(d)))
                # equal up to the defect map's replaced pixels
                assert np.median(np.abs(r.corrected[k] - expect)) < 1e-4
    t = _dxchange_normalised(path)
    if t is not None:
        # transmission in 0..1 within the noise. The noise of these small test frames (a few
        # 50 ms frames) is estimated from neighbouring-pixel differences; a file normalised
        # against the wrong references is off by far more (negative means, -log finite nowhere)
        assert np.isfinite(t).all()
        def sigma(mask):       # noise from horizontal neighbour differences, robust
            d = np.diff(t, axis=-1)[mask[..., 1:] & mask[..., :-1]]
            if d.size < 100:
                d = np.diff(t, axis=-1).ravel()
            return 1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2)

        s_open, s_dark = sigma(t > 0.5), sigma(t <= 0.5)     # open beam is the noisier
        lo, med, hi = np.percentile(t, [1, 50, 99])
        # (an opaque sample's median is 0 within the noise; wrong references are far off)
        assert -4 * s_dark <= lo and -s_dark < med <= 1.0 and hi <= 1 + 4 * s_open, (
            lo, med, hi, s_dark, s_open)
        if med > 4 * s_dark:      # a sample that transmits: -log finite but where noise crosses 0
            assert (t > 0).mean() > 0.9, (t > 0).mean()
    return info
