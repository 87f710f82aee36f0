"""Per-detector calibration profiles (DESIGN.md section 6).

A profile is a folder ``profiles/NAME/`` holding

- ``profile.toml``: schema version, detector id and description, effective pixel pitch,
  scintillator of this (thick, low-resolution) detector, the thin (high-resolution) reference
  detector that restoration maps toward, optics, calibration conditions, the array file name and
  the model-weight files;
- ``arrays.npz``: the frequency grid (cycles/pixel), MTF_HR, MTF_LR, their ratio, the PSF
  (thick = thin convolved with psf) and optionally the thick detector's NNPS;
- ``weights/*.pt``: optional model weights, read with ``torch.load(weights_only=True)`` so that
  loading a profile never executes code.

Everything is validated on load; every problem is a :class:`ProfileError` naming the profile
folder (or file) and the exact fault. Every file a profile names is resolved (symlinks
included) and must lie inside the profile folder; array sizes declared in the ``.npz`` headers
are bounded before anything is allocated.
"""
from __future__ import annotations

import math
import os
import pickle
import re
import shutil
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = 1

PROFILE_FILE = "profile.toml"
ARRAYS_FILE = "arrays.npz"
WEIGHTS_DIR = "weights"

# Upper bound accepted for an MTF value: measured MTFs overshoot 1 slightly from noise and
# edge-enhancement near zero frequency; more than 5 % means a normalisation error.
MTF_MAX = 1.05
PSF_SUM_TOLERANCE = 1e-3
NYQUIST_CY_PER_PX = 0.5

# Bounds on declared array sizes: profile arrays are curves of a few thousand points and PSFs of
# at most a few hundred pixels square; anything near these bounds is not a calibration.
MAX_ARRAY_BYTES = 64 * 2**20
MAX_ARRAYS_BYTES = 256 * 2**20

_REQUIRED_ARRAYS = ("frequency_cy_per_px", "mtf_hr", "mtf_lr", "mtf_ratio", "psf")
_OPTIONAL_ARRAYS = ("nnps_lr",)
_METHOD_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class ProfileError(ValueError):
    """A calibration profile is missing, malformed or inconsistent.

    The message names the profile path and the exact problem.
    """


def _where(path: Path | str | None, name: str = "") -> str:
    if path is not None:
        return str(path)
    return f"profile {name!r} (not saved)" if name else "profile (not saved)"


# --------------------------------------------------------------------------------------------
# Minimal TOML writer (strings, numbers, booleans, flat tables): enough for profile.toml.
# --------------------------------------------------------------------------------------------
def _toml_key(key: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_-]+", key):
        return key
    return _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(value, str):
        out = value.replace("\\", "\\\\").replace('"', '\\"')
        out = out.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
        out = "".join(c if ord(c) >= 0x20 and ord(c) != 0x7F else f"\\u{ord(c):04x}" for c in out)
        return f'"{out}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} value {value!r} to TOML")


def dumps_toml(data: dict[str, Any]) -> str:
    """Serialise a dict of scalars and one level of tables (dicts) to TOML text."""
    lines: list[str] = []
    tables: list[tuple[str, dict]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif value is not None:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, table in tables:
        lines.append("")
        lines.append(f"[{_toml_key(key)}]")
        for k, v in table.items():
            if isinstance(v, dict):
                raise TypeError(f"nested table [{key}.{k}] is not supported in profile.toml")
            if v is not None:
                lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------
def _check_scintillator(where: str, label: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise ProfileError(f"{where}: [{label}] must be a table, got {type(value).__name__}")
    material = value.get("material")
    if not isinstance(material, str) or not material.strip():
        raise ProfileError(f"{where}: [{label}] needs a non-empty 'material' string, got {material!r}")
    has_thickness = "thickness_um" in value
    has_density = "areal_density_mg_cm2" in value
    if not (has_thickness or has_density):
        raise ProfileError(
            f"{where}: [{label}] needs 'thickness_um' or 'areal_density_mg_cm2', got keys {sorted(value)}"
        )
    for key in ("thickness_um", "areal_density_mg_cm2"):
        if key in value:
            v = value[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ProfileError(f"{where}: [{label}] {key} must be a positive finite number, got {v!r}")


def _check_positive(where: str, label: str, v: Any, allow_none: bool = False, allow_zero: bool = False) -> None:
    if v is None and allow_none:
        return
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
    ok = ok and math.isfinite(float(v)) and (float(v) >= 0 if allow_zero else float(v) > 0)
    if not ok:
        bound = "non-negative" if allow_zero else "positive"
        raise ProfileError(f"{where}: {label} must be a {bound} finite number, got {v!r}")


def _check_curve(where: str, label: str, arr: Any, n: int, lo: float, hi: float | None) -> None:
    if not isinstance(arr, np.ndarray):
        raise ProfileError(f"{where}: array {label} must be a numpy array, got {type(arr).__name__}")
    if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
        raise ProfileError(f"{where}: array {label} must be real numeric, got dtype {arr.dtype}")
    if arr.shape != (n,):
        raise ProfileError(
            f"{where}: array {label} has shape {arr.shape}, expected ({n},) to match frequency_cy_per_px"
        )
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ProfileError(f"{where}: array {label} contains NaN/inf (first at index {bad})")
    if arr.min() < lo:
        raise ProfileError(f"{where}: array {label} has value {arr.min():.4g} below {lo}")
    if hi is not None and arr.max() > hi:
        raise ProfileError(f"{where}: array {label} has value {arr.max():.4g} above {hi}")


def radial_interpolate(
    frequency_cy_per_px: np.ndarray, curve: np.ndarray, shape: tuple[int, int], rfft: bool = True
) -> np.ndarray:
    """Interpolate a 1-D radial curve onto the 2-D FFT frequency grid of an image.

    Parameters
    ----------
    frequency_cy_per_px : 1-D increasing grid (cycles/pixel), starting at 0.
    curve : values on that grid.
    shape : (rows, cols) of the image in pixels.
    rfft : True for the ``rfft2`` half-plane grid (rows, cols//2+1), False for the full ``fft2`` grid.

    Frequencies beyond the last grid point (the corners, up to 0.707 cy/px) take the last value.
    """
    fy = np.fft.fftfreq(shape[0])
    fx = np.fft.rfftfreq(shape[1]) if rfft else np.fft.fftfreq(shape[1])
    radius = np.hypot(fy[:, None], fx[None, :])
    return np.interp(radius, frequency_cy_per_px, curve).astype(np.float32)


# --------------------------------------------------------------------------------------------
@dataclass
class DetectorProfile:
    """Calibration of one (thick, low-resolution) detector relative to a thin reference.

    All spectral arrays share ``frequency_cy_per_px`` (cycles per pixel, 0 .. >= Nyquist).
    ``psf`` is the blur kernel with ``thick = thin (*) psf`` on the pixel grid.
    """

    name: str
    detector_id: str
    description: str
    pixel_size_um: float
    scintillator: dict
    reference: dict
    optics: dict
    calibration: dict
    frequency_cy_per_px: np.ndarray
    mtf_hr: np.ndarray
    mtf_lr: np.ndarray
    mtf_ratio: np.ndarray
    psf: np.ndarray
    nnps_lr: np.ndarray | None
    nnps_mean_signal: float | None
    esf_sigma_um: float | None = None
    noise_sigma: float | None = None
    weights: dict[str, str] = field(default_factory=dict)
    # Fidelity guard: relative forward-model / method tolerance per restoration method
    # ("forward_model" for methods without their own), calibrated on ordinary frames.
    fidelity_tolerance: dict[str, float] = field(default_factory=dict)
    # Fidelity report: scale of the null-space uncertainty band per method, calibrated so the
    # actual error lies inside the band in the chosen fraction of tiles.
    fidelity_uncertainty: dict[str, float] = field(default_factory=dict)
    # Beam hardening in an energy-integrating screen: the mean absorbed energy per quantum grows
    # as the sample attenuates, ~ T^-beta, so the noise variance goes as T^(1 - beta), not T.
    noise_hardening_exponent: float = 0.0
    # Plug-and-play prior weight (DPIR's lambda) fitted to this detector's forward model on the
    # twin's training families (scripts/calibrate_prior_weight.py); None: the method's default.
    pnp_prior_weight: float | None = None
    path: Path | None = None

    # ---------------------------------------------------------------- derived quantities
    @property
    def frequency_cy_per_mm(self) -> np.ndarray:
        """Frequency grid in cycles/mm at the scintillator (1 mm = 1000 um)."""
        return np.asarray(self.frequency_cy_per_px, dtype=float) * 1000.0 / float(self.pixel_size_um)

    @property
    def nnps_lr_mm2(self) -> np.ndarray | None:
        """NNPS in mm^2 (px^2 times pixel area in mm^2), or None."""
        if self.nnps_lr is None:
            return None
        return np.asarray(self.nnps_lr, dtype=float) * (float(self.pixel_size_um) / 1000.0) ** 2

    def mtf_ratio_2d(self, shape: tuple[int, int]) -> np.ndarray:
        """MTF_LR/MTF_HR interpolated radially onto the ``rfft2`` grid of an image of ``shape``.

        Returns a float32 array of shape (rows, cols // 2 + 1).
        """
        if (
            not isinstance(shape, (tuple, list))
            or len(shape) != 2
            or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in shape)
        ):
            raise ProfileError(
                f"{_where(self.path, self.name)}: mtf_ratio_2d needs shape (rows, cols) of positive ints, got {shape!r}"
            )
        return radial_interpolate(self.frequency_cy_per_px, self.mtf_ratio, (int(shape[0]), int(shape[1])))

    # ---------------------------------------------------------------- validation
    def validate(self) -> None:
        """Check every field; raise :class:`ProfileError` naming the first problem found."""
        where = _where(self.path, self.name)
        for label in ("name", "detector_id"):
            v = getattr(self, label)
            if not isinstance(v, str) or not v.strip():
                raise ProfileError(f"{where}: {label} must be a non-empty string, got {v!r}")
        if not isinstance(self.description, str):
            raise ProfileError(f"{where}: description must be a string, got {type(self.description).__name__}")
        _check_positive(where, "pixel_size_um", self.pixel_size_um)
        _check_scintillator(where, "scintillator", self.scintillator)
        _check_scintillator(where, "reference", self.reference)
        if not isinstance(self.optics, dict):
            raise ProfileError(f"{where}: [optics] must be a table, got {type(self.optics).__name__}")
        if "magnification" in self.optics:
            _check_positive(where, "optics.magnification", self.optics["magnification"])
        if "numerical_aperture" in self.optics:
            na = self.optics["numerical_aperture"]
            _check_positive(where, "optics.numerical_aperture", na)
            # NA above ~1.6 is impossible even for oil immersion optics.
            if float(na) > 1.6:
                raise ProfileError(f"{where}: optics.numerical_aperture {na} is above 1.6")
        if not isinstance(self.calibration, dict):
            raise ProfileError(f"{where}: [calibration] must be a table, got {type(self.calibration).__name__}")

        f = self.frequency_cy_per_px
        if not isinstance(f, np.ndarray) or f.ndim != 1 or f.size < 2:
            shape = getattr(f, "shape", None)
            raise ProfileError(
                f"{where}: array frequency_cy_per_px must be 1-D with at least 2 points, got shape {shape}"
            )
        if not np.issubdtype(f.dtype, np.floating) and not np.issubdtype(f.dtype, np.integer):
            raise ProfileError(f"{where}: array frequency_cy_per_px must be real numeric, got dtype {f.dtype}")
        if not np.all(np.isfinite(f)):
            raise ProfileError(f"{where}: array frequency_cy_per_px contains NaN/inf")
        if f[0] != 0:
            raise ProfileError(f"{where}: array frequency_cy_per_px must start at 0, starts at {f[0]!r}")
        steps = np.diff(f)
        if np.any(steps <= 0):
            i = int(np.flatnonzero(steps <= 0)[0])
            raise ProfileError(
                f"{where}: array frequency_cy_per_px is not strictly increasing "
                f"(f[{i}]={f[i]:.6g}, f[{i + 1}]={f[i + 1]:.6g})"
            )
        if f[-1] < NYQUIST_CY_PER_PX - 1e-9:
            raise ProfileError(
                f"{where}: array frequency_cy_per_px ends at {f[-1]:.4g} cy/px, must reach Nyquist (0.5)"
            )
        n = f.size
        for label in ("mtf_hr", "mtf_lr", "mtf_ratio"):
            _check_curve(where, label, getattr(self, label), n, 0.0, MTF_MAX)
        for label in ("mtf_hr", "mtf_lr"):
            v0 = float(getattr(self, label)[0])
            if abs(v0 - 1.0) > 1e-3:
                raise ProfileError(f"{where}: array {label} must be 1 at zero frequency, got {v0:.6g}")

        psf = self.psf
        if not isinstance(psf, np.ndarray) or psf.ndim != 2:
            raise ProfileError(f"{where}: array psf must be 2-D, got shape {getattr(psf, 'shape', None)}")
        if psf.shape[0] != psf.shape[1] or psf.shape[0] % 2 != 1:
            raise ProfileError(f"{where}: array psf must be an odd square kernel, got shape {psf.shape}")
        if not np.issubdtype(psf.dtype, np.floating):
            raise ProfileError(f"{where}: array psf must be floating point, got dtype {psf.dtype}")
        if not np.all(np.isfinite(psf)):
            raise ProfileError(f"{where}: array psf contains NaN/inf")
        total = float(psf.sum())
        if abs(total - 1.0) > PSF_SUM_TOLERANCE:
            raise ProfileError(f"{where}: array psf sums to {total:.6g}, expected 1 (within {PSF_SUM_TOLERANCE})")

        if self.nnps_lr is not None:
            _check_curve(where, "nnps_lr", self.nnps_lr, n, 0.0, None)
            if self.nnps_mean_signal is None:
                raise ProfileError(f"{where}: nnps_lr is given but nnps_mean_signal is missing")
        _check_positive(where, "nnps_mean_signal", self.nnps_mean_signal, allow_none=True)
        _check_positive(where, "esf_sigma_um", self.esf_sigma_um, allow_none=True, allow_zero=True)
        _check_positive(where, "noise_sigma", self.noise_sigma, allow_none=True, allow_zero=True)

        if not isinstance(self.fidelity_tolerance, dict):
            raise ProfileError(f"{where}: [fidelity_tolerance] must be a table, got "
                               f"{type(self.fidelity_tolerance).__name__}")
        for method, tol in self.fidelity_tolerance.items():
            if not isinstance(method, str) or not _METHOD_NAME.match(method):
                raise ProfileError(f"{where}: fidelity_tolerance name {method!r} is not a plain identifier")
            if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (0 <= tol < 10):
                raise ProfileError(f"{where}: fidelity_tolerance.{method} must be a number in "
                                   f"[0, 10) (relative), got {tol!r}")

        if not isinstance(self.fidelity_uncertainty, dict):
            raise ProfileError(f"{where}: [fidelity_uncertainty] must be a table, got "
                               f"{type(self.fidelity_uncertainty).__name__}")
        for method, k in self.fidelity_uncertainty.items():
            if not isinstance(method, str) or not _METHOD_NAME.match(method):
                raise ProfileError(f"{where}: fidelity_uncertainty name {method!r} is not a plain identifier")
            if isinstance(k, bool) or not isinstance(k, (int, float)) or not (0 <= k < 1e4):
                raise ProfileError(f"{where}: fidelity_uncertainty.{method} must be a number in "
                                   f"[0, 1e4), got {k!r}")
        beta = self.noise_hardening_exponent
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not (0 <= beta < 1):
            raise ProfileError(f"{where}: noise_hardening_exponent must be a number in [0, 1), "
                               f"got {beta!r}")
        lam = self.pnp_prior_weight
        if lam is not None and (isinstance(lam, bool) or not isinstance(lam, (int, float))
                                or not (0.01 <= lam <= 10)):
            raise ProfileError(f"{where}: pnp_prior_weight must be a number in [0.01, 10], "
                               f"got {lam!r}")

        if not isinstance(self.weights, dict):
            raise ProfileError(f"{where}: [weights] must be a table, got {type(self.weights).__name__}")
        for method, file_name in self.weights.items():
            if not isinstance(method, str) or not _METHOD_NAME.match(method):
                raise ProfileError(f"{where}: weights method name {method!r} is not a plain identifier")
            _check_relative_file(where, f"weights.{method}", file_name)
            if self.path is not None and not (self.path / file_name).is_file():
                raise ProfileError(f"{where}: weights file for {method!r} not found: {self.path / file_name}")

    # ---------------------------------------------------------------- persistence
    def _toml_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        if self.esf_sigma_um is not None:
            data["esf_sigma_um"] = float(self.esf_sigma_um)
        if self.noise_sigma is not None:
            data["noise_sigma"] = float(self.noise_sigma)
        if self.nnps_mean_signal is not None:
            data["nnps_mean_signal"] = float(self.nnps_mean_signal)
        if self.noise_hardening_exponent:
            data["noise_hardening_exponent"] = float(self.noise_hardening_exponent)
        if self.pnp_prior_weight is not None:
            data["pnp_prior_weight"] = float(self.pnp_prior_weight)
        data["detector"] = {
            "id": self.detector_id,
            "description": self.description,
            "pixel_size_um": float(self.pixel_size_um),
        }
        data["scintillator"] = dict(self.scintillator)
        data["reference"] = dict(self.reference)
        data["optics"] = dict(self.optics)
        data["calibration"] = dict(self.calibration)
        data["arrays"] = {"file": ARRAYS_FILE}
        data["weights"] = dict(self.weights)
        if self.fidelity_tolerance:
            data["fidelity_tolerance"] = {k: float(v) for k, v in self.fidelity_tolerance.items()}
        if self.fidelity_uncertainty:
            data["fidelity_uncertainty"] = {k: float(v) for k, v in self.fidelity_uncertainty.items()}
        return data

    def _write_toml(self, folder: Path) -> None:
        tmp = folder / (PROFILE_FILE + ".tmp")
        tmp.write_text(dumps_toml(self._toml_dict()), encoding="utf-8")
        os.replace(tmp, folder / PROFILE_FILE)

    def save(self, folder: Path | str) -> None:
        """Validate, then write ``profile.toml`` and ``arrays.npz`` into ``folder``.

        Weight files referenced by the profile are copied along when saving to a new folder.
        ``name`` and ``path`` are updated to the folder.
        """
        folder = Path(folder)
        old_path = self.path
        self.validate()
        folder.mkdir(parents=True, exist_ok=True)
        if old_path is not None and old_path.resolve() != folder.resolve():
            for file_name in self.weights.values():
                dst = folder / file_name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(old_path / file_name, dst)
        arrays = {
            "frequency_cy_per_px": np.asarray(self.frequency_cy_per_px, dtype=np.float64),
            "mtf_hr": np.asarray(self.mtf_hr, dtype=np.float64),
            "mtf_lr": np.asarray(self.mtf_lr, dtype=np.float64),
            "mtf_ratio": np.asarray(self.mtf_ratio, dtype=np.float64),
            "psf": np.asarray(self.psf, dtype=np.float64),
        }
        if self.nnps_lr is not None:
            arrays["nnps_lr"] = np.asarray(self.nnps_lr, dtype=np.float64)
        tmp = folder / "arrays.tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, folder / ARRAYS_FILE)
        self._write_toml(folder)
        self.path = folder
        self.name = folder.name

    @classmethod
    def load(cls, folder: Path | str) -> DetectorProfile:
        """Read and validate a profile folder; every fault is a :class:`ProfileError`."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ProfileError(f"{folder}: profile folder does not exist")
        toml_path = folder / PROFILE_FILE
        if not toml_path.is_file():
            raise ProfileError(f"{folder}: missing {PROFILE_FILE}")
        _inside(folder, PROFILE_FILE, str(folder), PROFILE_FILE)
        try:
            raw = toml_path.read_bytes()
        except OSError as exc:
            raise ProfileError(f"{toml_path}: cannot read ({exc.strerror})") from None
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ProfileError(f"{toml_path}: not UTF-8 text (byte {exc.start}: "
                               f"{raw[exc.start:exc.start + 1]!r})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ProfileError(f"{toml_path}: invalid TOML: {exc}") from None

        version = data.get("schema_version")
        if version is None:
            raise ProfileError(f"{toml_path}: missing schema_version (this version reads {SCHEMA_VERSION})")
        if version != SCHEMA_VERSION or isinstance(version, bool):
            raise ProfileError(
                f"{toml_path}: unknown schema_version {version!r}; this version of xinstrument reads {SCHEMA_VERSION}"
            )

        def table(key: str, required: bool = True) -> dict:
            if key not in data:
                if required:
                    raise ProfileError(f"{toml_path}: missing table [{key}]")
                return {}
            value = data[key]
            if not isinstance(value, dict):
                raise ProfileError(f"{toml_path}: [{key}] must be a table, got {type(value).__name__}")
            return value

        detector = table("detector")
        for key in ("id", "pixel_size_um"):
            if key not in detector:
                raise ProfileError(f"{toml_path}: [detector] is missing '{key}'")
        arrays_table = table("arrays")
        array_file = arrays_table.get("file", ARRAYS_FILE)
        _check_relative_file(str(toml_path), "arrays.file", array_file)
        array_path = folder / array_file
        if not array_path.is_file():
            raise ProfileError(f"{folder}: array file {array_file!r} not found ({array_path})")
        _inside(folder, array_file, str(toml_path), "arrays.file")
        arrays = _read_arrays(array_path)
        for key in _REQUIRED_ARRAYS:
            if key not in arrays:
                raise ProfileError(f"{array_path}: missing array '{key}' (has {sorted(arrays)})")

        weights = table("weights", required=False)
        for method, file_name in weights.items():
            if not isinstance(file_name, str):
                raise ProfileError(f"{toml_path}: weights.{method} must be a file name string, got {file_name!r}")
            _inside(folder, file_name, str(toml_path), f"weights.{method}")

        profile = cls(
            name=folder.name,
            detector_id=detector.get("id"),
            description=detector.get("description", ""),
            pixel_size_um=detector.get("pixel_size_um"),
            scintillator=table("scintillator"),
            reference=table("reference"),
            optics=table("optics", required=False),
            calibration=table("calibration", required=False),
            frequency_cy_per_px=arrays["frequency_cy_per_px"],
            mtf_hr=arrays["mtf_hr"],
            mtf_lr=arrays["mtf_lr"],
            mtf_ratio=arrays["mtf_ratio"],
            psf=arrays["psf"],
            nnps_lr=arrays.get("nnps_lr"),
            nnps_mean_signal=data.get("nnps_mean_signal"),
            esf_sigma_um=data.get("esf_sigma_um"),
            noise_sigma=data.get("noise_sigma"),
            weights=dict(weights),
            fidelity_tolerance=dict(table("fidelity_tolerance", required=False)),
            fidelity_uncertainty=dict(table("fidelity_uncertainty", required=False)),
            noise_hardening_exponent=data.get("noise_hardening_exponent", 0.0),
            pnp_prior_weight=data.get("pnp_prior_weight"),
            path=folder,
        )
        profile.validate()
        return profile

    # ---------------------------------------------------------------- model weights
    def load_weights(self, method: str) -> dict[str, Any]:
        """Load the state dict of ``method`` without executing code (``weights_only=True``).

        Returns a dict of parameter name -> ``torch.Tensor`` on the CPU.
        """
        import torch

        where = _where(self.path, self.name)
        if method not in self.weights:
            raise ProfileError(f"{where}: no weights for method {method!r} (has {sorted(self.weights) or 'none'})")
        if self.path is None:
            raise ProfileError(f"{where}: profile has not been saved, weights cannot be located")
        file_path = self.path / self.weights[method]
        if not file_path.is_file():
            raise ProfileError(f"{where}: weights file for {method!r} not found: {file_path}")
        _inside(self.path, self.weights[method], where, f"weights.{method}")
        try:
            state = torch.load(file_path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ProfileError(
                f"{file_path}: not a plain tensor file (refused by torch.load weights_only=True): {first}"
            ) from exc
        if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
        ):
            raise ProfileError(
                f"{file_path}: expected a state dict of name -> tensor, got {type(state).__name__}"
            )
        return dict(state)

    def save_weights(self, method: str, state_dict: dict, file_name: str | None = None) -> None:
        """Write ``state_dict`` to ``weights/<method>.pt`` (or ``file_name``) and record it in profile.toml."""
        import torch

        where = _where(self.path, self.name)
        if not isinstance(method, str) or not _METHOD_NAME.match(method):
            raise ProfileError(f"{where}: weights method name {method!r} is not a plain identifier")
        if self.path is None:
            raise ProfileError(f"{where}: save the profile to a folder before saving weights")
        if not isinstance(state_dict, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()
        ):
            raise ProfileError(f"{where}: weights for {method!r} must be a dict of name -> torch.Tensor")
        file_name = file_name or f"{WEIGHTS_DIR}/{method}.pt"
        _check_relative_file(where, f"weights.{method}", file_name)
        target = self.path / file_name
        target.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
        torch.save(tensors, target)
        self.weights[method] = file_name
        self._write_toml(self.path)

    # ---------------------------------------------------------------- display
    def summary(self) -> str:
        """Human-readable one-screen description (for ``xinstrument profiles show``)."""
        def scint(d: dict) -> str:
            if "thickness_um" in d:
                return f"{d.get('material')} {d['thickness_um']:g} um"
            return f"{d.get('material')} {d.get('areal_density_mg_cm2', '?'):g} mg/cm^2"

        f = np.asarray(self.frequency_cy_per_px)
        nnps = "none" if self.nnps_lr is None else f"yes (mean signal {self.nnps_mean_signal:g})"
        lines = [
            f"profile {self.name}  ({self.path})",
            f"  detector      {self.detector_id}: {self.description}",
            f"  pixel size    {float(self.pixel_size_um):g} um (Nyquist {500.0 / float(self.pixel_size_um):.1f} cy/mm)",
            f"  scintillator  {scint(self.scintillator)}  -> reference {scint(self.reference)}",
            f"  optics        {self.optics or 'contact'}",
            f"  calibration   {self.calibration}",
            f"  grid          {f.size} points, 0 .. {f[-1]:.3g} cy/px",
            f"  PSF           {self.psf.shape[0]}x{self.psf.shape[1]} px",
            f"  NNPS          {nnps}",
            f"  weights       {', '.join(sorted(self.weights)) or 'none'}",
        ]
        return "\n".join(lines)


def _inside(folder: Path, file_name: str, where: str, label: str) -> Path:
    """Resolve ``folder / file_name`` (every symlink on the way) and refuse what lands outside
    the profile folder."""
    _check_relative_file(where, label, file_name)
    try:
        root = folder.resolve(strict=True)
        target = (folder / file_name).resolve()
    except (OSError, RuntimeError) as exc:     # a symlink loop, an unreadable folder
        raise ProfileError(f"{where}: {label} {file_name!r} cannot be resolved ({exc})") from None
    if not target.is_relative_to(root):
        raise ProfileError(f"{where}: {label} {file_name!r} resolves to {target}, outside the "
                           f"profile folder {root}; links out of a profile are refused")
    return target


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Read an ``.npz`` after checking every member's declared shape and dtype."""
    if not zipfile.is_zipfile(path):
        raise ProfileError(f"{path}: not an .npz array archive (not a zip file)")
    total = 0
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy") or "/" in info.filename:
                    raise ProfileError(f"{path}: unexpected member {info.filename!r} (an .npz "
                                       "holds NAME.npy arrays only)")
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                    elif version in ((2, 0), (3, 0)):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
                    else:
                        raise ProfileError(f"{path}: {info.filename}: unsupported .npy "
                                           f"version {version}")
                name = info.filename[:-4]
                if dtype.hasobject:
                    raise ProfileError(f"{path}: array {name!r} holds Python objects "
                                       f"({dtype}); profiles hold numbers only")
                nbytes = math.prod(shape) * dtype.itemsize
                total += nbytes
                if nbytes > MAX_ARRAY_BYTES or total > MAX_ARRAYS_BYTES:
                    raise ProfileError(
                        f"{path}: array {name!r} declares shape {tuple(shape)} of {dtype} "
                        f"({nbytes / 2**20:.3g} MiB); a profile array is at most "
                        f"{MAX_ARRAY_BYTES // 2**20} MiB, {MAX_ARRAYS_BYTES // 2**20} MiB in all")
        with np.load(path, allow_pickle=False) as npz:
            return {k: np.array(npz[k]) for k in npz.files}
    except ProfileError:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, RuntimeError) as exc:
        raise ProfileError(f"{path}: cannot read arrays ({type(exc).__name__}: {exc})") from None


def _check_relative_file(where: str, label: str, file_name: Any) -> None:
    if not isinstance(file_name, str) or not file_name:
        raise ProfileError(f"{where}: {label} must be a non-empty file name, got {file_name!r}")
    p = Path(file_name)
    if p.is_absolute() or ".." in p.parts:
        raise ProfileError(f"{where}: {label} must be relative to the profile folder, got {file_name!r}")


# --------------------------------------------------------------------------------------------
# Lookup
# --------------------------------------------------------------------------------------------
def repo_profiles_dir() -> Path:
    """The repository's shipped ``profiles/`` folder."""
    import xinstrument

    return Path(xinstrument.__file__).resolve().parent.parent / "profiles"


def profile_search_path() -> list[Path]:
    """Folders searched for profile names: ``$XI_PROFILE_PATH`` entries first, then ``profiles/``."""
    dirs = [Path(p) for p in os.environ.get("XI_PROFILE_PATH", "").split(os.pathsep) if p.strip()]
    dirs.append(repo_profiles_dir())
    return dirs


def list_profiles() -> list[str]:
    """Names of all profiles found on the search path (sorted, first occurrence wins)."""
    names: set[str] = set()
    for d in profile_search_path():
        if d.is_dir():
            names.update(sub.name for sub in d.iterdir() if (sub / PROFILE_FILE).is_file())
    return sorted(names)


def find_profile(name_or_path: str | Path) -> DetectorProfile:
    """Load a profile given a folder path or a name on the search path."""
    candidate = Path(name_or_path)
    if candidate.is_dir():
        return DetectorProfile.load(candidate)
    name = str(name_or_path)
    if not name or os.sep in name or (os.altsep and os.altsep in name):
        raise ProfileError(f"{name_or_path}: profile folder does not exist")
    for d in profile_search_path():
        if (d / name / PROFILE_FILE).is_file():
            return DetectorProfile.load(d / name)
    searched = ", ".join(str(d) for d in profile_search_path())
    raise ProfileError(
        f"{name}: no such profile (searched {searched}; available: {', '.join(list_profiles()) or 'none'})"
    )
