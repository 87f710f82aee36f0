"""`xinstrument gui` names the missing system libraries instead of letting Qt abort."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xinstrument.gui import system_libs
from xinstrument.gui.system_libs import (
    DEBIAN_PACKAGES,
    gui_setup_problem,
    missing_libraries,
    packages_for,
    xcb_plugin_files,
)

needs_ldd = pytest.mark.skipif(shutil.which("ldd") is None or not sys.platform.startswith("linux"),
                               reason="the probe asks the Linux dynamic linker (ldd)")


def _plugin_missing_icccm(tmp_path: Path) -> Path:
    """A copy of PyQt6's real xcb plugin whose DT_NEEDED entry for libxcb-icccm names a library
    that exists nowhere (same length, so the ELF stays valid); Qt's own libraries beside it."""
    plugin, qpa = xcb_plugin_files()
    qt = tmp_path / "Qt6"
    (qt / "plugins" / "platforms").mkdir(parents=True)
    (qt / "lib").symlink_to(qpa.parent)
    raw = plugin.read_bytes()
    assert raw.count(b"libxcb-icccm.so.4\0") == 1
    copy = qt / "plugins" / "platforms" / "libqxcb.so"
    copy.write_bytes(raw.replace(b"libxcb-icccm.so.4\0", b"libxcb-icccq.so.4\0"))
    return copy


@needs_ldd
def test_the_probe_finds_a_library_the_plugin_links_but_the_machine_lacks(tmp_path):
    plugin = _plugin_missing_icccm(tmp_path)
    assert "libxcb-icccq.so.4" in missing_libraries([plugin])
    msg = gui_setup_problem({"DISPLAY": ":0"}, files=[plugin])
    assert msg is not None and "libxcb-icccq.so.4" in msg and "apt-get install" in msg


@needs_ldd
def test_on_this_machine_the_probe_agrees_with_the_linker():
    files = xcb_plugin_files()
    assert files, "PyQt6 ships its xcb plugin"
    out = subprocess.run(["ldd", str(files[0])], capture_output=True, text=True,
                         check=False).stdout
    linked_missing = {line.split()[0] for line in out.splitlines() if "not found" in line}
    assert linked_missing <= set(missing_libraries())
    # every X11 library the plugin links has a package name in the README's list
    linked = {line.split()[0] for line in out.splitlines() if "=>" in line}
    xlibs = {s for s in linked if s.startswith(("libxcb", "libX11", "libxkbcommon"))}
    assert xlibs <= set(DEBIAN_PACKAGES)


def test_package_names_and_platform_choice():
    assert packages_for(["libxcb-icccm.so.4", "libxcb-keysyms.so.1"]) == [
        "libxcb-icccm4", "libxcb-keysyms1"]
    assert gui_setup_problem({"QT_QPA_PLATFORM": "offscreen"}) is None
    assert "DISPLAY" in gui_setup_problem({}, files=[])


def test_readme_lists_every_package():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for pkg in ("libxcb-icccm4", "libxcb-keysyms1", "libxcb-cursor0"):
        assert pkg in readme


def test_gui_command_prints_the_list_and_exits_2(tmp_path, monkeypatch, capsys):
    from xinstrument.cli import main
    plugin = _plugin_missing_icccm(tmp_path) if shutil.which("ldd") else None
    if plugin is None:
        pytest.skip("needs ldd")
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(system_libs, "xcb_plugin_files", lambda: [plugin])
    assert main(["gui"]) == 2
    err = capsys.readouterr().err
    assert "libxcb-icccq.so.4" in err and "Traceback" not in err
