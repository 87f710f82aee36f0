"""Test-only per-file tasks: one that fails once (marker file) and one that always fails."""
from pathlib import Path

from xinstrument.batch import restore_file


def fail_once(input_path, output_path, *, marker_dir, **kw):
    marker = Path(marker_dir) / (Path(input_path).name + ".failed-once")
    if not marker.exists():
        marker.write_text("1")
        raise ConnectionResetError(f"transient read failure of {Path(input_path).name}")
    return restore_file(input_path, output_path, **kw)


def always_fail(input_path, output_path, **kw):
    raise ConnectionResetError(f"storage node for {Path(input_path).name} unreachable")
