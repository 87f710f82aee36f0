"""Does this machine have the system libraries Qt's X11 (xcb) window needs?

PyQt6's wheels bring Qt but not the X11 client libraries its xcb platform plugin links against;
without them Qt aborts the process (SIGABRT, exit code 134) with a message that names the plugin,
not the missing package. This module asks the dynamic linker, before any QApplication exists,
which of the plugin's libraries are missing, and names the Debian / Ubuntu packages that
provide them. It imports no Qt module.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

# soname -> Debian/Ubuntu package (bookworm / jammy / noble names). The list is what
# `ldd libqxcb.so` and `ldd libQt6XcbQpa.so.6` of the PyQt6 6.x wheels name, beyond libc.
DEBIAN_PACKAGES: dict[str, str] = {
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxcb.so.1": "libxcb1",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libX11.so.6": "libx11-6",
    "libEGL.so.1": "libegl1",
    "libGL.so.1": "libgl1",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libdbus-1.so.3": "libdbus-1-3",
    "libglib-2.0.so.0": "libglib2.0-0",
}
# libxcb-cursor0 is loaded at run time by Qt >= 6.5 where the plugin does not link it
RUNTIME_LOADED = ("libxcb-cursor.so.0",)

_NOT_FOUND = re.compile(r"^\s*(\S+)\s+=>\s+not found", re.MULTILINE)


def xcb_plugin_files() -> list[Path]:
    """PyQt6's xcb platform plugin and the Qt library it loads (those that exist)."""
    spec = importlib.util.find_spec("PyQt6")
    if spec is None or not spec.submodule_search_locations:
        return []
    qt = Path(next(iter(spec.submodule_search_locations))) / "Qt6"
    return [p for p in (qt / "plugins" / "platforms" / "libqxcb.so",
                        qt / "lib" / "libQt6XcbQpa.so.6") if p.exists()]


def missing_libraries(files: list[Path] | None = None) -> list[str]:
    """Sonames the dynamic linker cannot find for ``files`` (default: the xcb plugin)."""
    files = xcb_plugin_files() if files is None else files
    missing: list[str] = []
    ldd = shutil.which("ldd")
    for f in files:
        if ldd is None:
            break
        try:
            out = subprocess.run([ldd, str(f)], capture_output=True, text=True, timeout=20,
                                 check=False).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        missing += [m for m in _NOT_FOUND.findall(out) if m not in missing]
    if files:
        import ctypes
        for soname in RUNTIME_LOADED:
            if soname in missing:
                continue
            try:
                ctypes.CDLL(soname)
            except OSError:
                missing.append(soname)
    return missing


def packages_for(sonames: list[str]) -> list[str]:
    """Debian/Ubuntu package names for ``sonames`` (the soname itself where unknown)."""
    return sorted({DEBIAN_PACKAGES.get(s, s) for s in sonames})


def xcb_platform_selected(environ: dict[str, str] | None = None) -> bool:
    """True when Qt would open its X11 (xcb) platform: Linux and QT_QPA_PLATFORM unset or
    naming xcb (offscreen, wayland, vnc ... need none of these libraries)."""
    env = os.environ if environ is None else environ
    if not sys.platform.startswith("linux"):
        return False
    platform = env.get("QT_QPA_PLATFORM", "").strip()
    if platform:
        return platform.split(":")[0].split(";")[0] == "xcb"
    return not env.get("WAYLAND_DISPLAY")


def gui_setup_problem(environ: dict[str, str] | None = None,
                      files: list[Path] | None = None) -> str | None:
    """What stops the console window from opening on this machine, in one message with the
    fix, or None. Checked before a QApplication is created."""
    env = os.environ if environ is None else environ
    if not xcb_platform_selected(env):
        return None
    missing = missing_libraries(files)
    if missing:
        pkgs = packages_for(missing)
        return ("the Qt window needs system libraries that are missing here ("
                + ", ".join(missing) + "). On Debian / Ubuntu: sudo apt-get install "
                + " ".join(pkgs) + " (README: 'Set-up')")
    if not env.get("DISPLAY"):
        return ("no X display: DISPLAY is not set (log in to a desktop, use ssh -X, or run "
                "under xvfb-run)")
    return None
