"""The layer contracts of DESIGN.md section 2, checked on the import graph (AST, every module,
function-local imports included), and the one-writer rule of the recording sink.

- drivers never import xinstrument;
- restoration and calibration are pure: no drivers, no Qt, no digital twin (xinstrument.sim),
  no Instrument, GUI or IOC (their command-line modules are clients and exempt);
- Qt is imported only under xinstrument/gui;
- clients (gui, epics, bluesky, cli, scans, demo, batch) never reach the device layer;
- exactly one module family writes scan files: xinstrument/storage (nothing else creates a
  ScanWriter or opens an HDF5 file for writing).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QT = ("PyQt6", "PyQt5", "PySide6", "pyqtgraph", "pytestqt")


def _modules(top: str) -> list[Path]:
    return sorted(p for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts)


def _dotted(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of everything ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _dotted(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def _violations(paths, forbidden, exempt=lambda p: False) -> list[str]:
    bad = []
    for p in paths:
        if exempt(p):
            continue
        for name in sorted(_imports(p)):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                bad.append(f"{p.relative_to(ROOT)} imports {name}")
    return bad


def _is_cli(p: Path) -> bool:
    return p.name == "cli.py" or p.name.startswith("bench")


def test_drivers_never_import_xinstrument():
    assert _violations(_modules("drivers"), ("xinstrument",)) == []


@pytest.mark.parametrize("package", ["restoration", "calibration"])
def test_restoration_and_calibration_are_pure(package):
    forbidden = ("drivers", *QT, "xinstrument.sim", "xinstrument.instrument", "xinstrument.gui",
                 "xinstrument.epics", "xinstrument.scans")
    assert _violations(_modules(f"xinstrument/{package}"), forbidden, exempt=_is_cli) == []


def test_qt_only_in_the_gui():
    paths = [p for p in _modules("xinstrument") + _modules("drivers")
             if "gui" not in p.relative_to(ROOT).parts]
    assert _violations(paths, QT) == []


@pytest.mark.parametrize("client", ["gui", "epics", "bluesky", "scans", "batch"])
def test_clients_never_reach_the_devices(client):
    assert _violations(_modules(f"xinstrument/{client}"), ("drivers",)) == []


def test_cli_and_demo_never_reach_the_devices():
    paths = [ROOT / "xinstrument" / "cli.py", ROOT / "xinstrument" / "demo.py"]
    assert _violations(paths, ("drivers",)) == []


DEVICES = ("tube", "camera", "focus_axis", "rotation_axis")
INSTRUMENT_NAMES = ("inst", "instrument")


def _device_access(path: Path) -> list[str]:
    """``inst.tube``, ``self.instrument.camera``, ``inst._private``: a client reaching past
    the Instrument API to a device or a private member."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        v = node.value
        owner = v.id if isinstance(v, ast.Name) else (
            v.attr if isinstance(v, ast.Attribute) and isinstance(v.value, ast.Name)
            and v.value.id == "self" else None)
        if owner not in INSTRUMENT_NAMES:
            continue
        if node.attr in DEVICES or (node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("client", ["gui", "epics", "bluesky"])
def test_clients_use_the_instrument_api_not_its_devices(client):
    # (a client holding the config may read it: inst.config.tube is configuration, not a device)
    assert [a for p in _modules(f"xinstrument/{client}") for a in _device_access(p)] == []


def _writes_hdf5(path: Path) -> list[str]:
    """Calls that create a ScanWriter or open an HDF5 file writable, outside storage."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
        if name in ("ScanWriter", "open_for_update"):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}(...)")
        elif name == "File" and isinstance(f, ast.Attribute) and \
                getattr(f.value, "id", "") == "h5py":
            mode = node.args[1] if len(node.args) > 1 else next(
                (k.value for k in node.keywords if k.arg == "mode"), None)
            if mode is None or not (isinstance(mode, ast.Constant) and mode.value == "r"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} h5py.File(..., "
                             f"{ast.unparse(mode) if mode is not None else 'default mode'})")
    return found


def test_only_the_storage_layer_writes_scan_files():
    paths = [p for p in _modules("xinstrument")
             if p.relative_to(ROOT).parts[:2] != ("xinstrument", "storage")]
    writers = [w for p in paths for w in _writes_hdf5(p)]
    assert writers == []
