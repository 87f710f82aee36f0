"""The documentation screenshots are produced by driving the real window through its states."""
from PyQt6.QtGui import QImage

from xinstrument.gui.screenshots import SHOTS, capture


def test_screenshots_of_the_console_in_each_state(qtbot, tmp_path):
    paths = capture(tmp_path / "shots", sensor_px=128)
    assert [p.name for p in paths] == list(SHOTS)
    sizes = set()
    for p in paths:
        img = QImage(str(p))
        assert not img.isNull() and img.width() >= 1000 and img.height() >= 600
        sizes.add(p.stat().st_size)
    assert len(sizes) == len(paths)                   # different states, not one image
    assert not (tmp_path / "shots" / ".screenshot-settings.ini").exists()
