"""The write benchmark runs end to end and reports ratios against the raw disk."""
from __future__ import annotations

import pytest

from xinstrument.storage import benchmark_write
from xinstrument.storage.bench import format_table


def test_benchmark_reports_every_writer_against_raw(tmp_path):
    res = benchmark_write(tmp_path, frame_shape=(128, 128), n_frames=4)
    assert res["raw_mb_s"] > 0 and res["bytes"] == 128 * 128 * 2 * 4
    assert set(res["results"]) == {"none", "lzf", "gzip"}
    for r in res["results"].values():
        assert r["mb_s"] > 0
        assert r["ratio_to_raw"] == pytest.approx(r["mb_s"] / res["raw_mb_s"])
    # Realistic noisy detector data: lossless codecs gain something, but not much.
    assert res["results"]["gzip"]["compression_ratio"] > 1.05
    assert res["results"]["none"]["compression_ratio"] == 1.0
    assert res["results"]["none"]["file_bytes"] > res["bytes"]
    assert list(tmp_path.iterdir()) == []  # benchmark files are removed
    table = format_table(res)
    assert "raw tofile" in table and "h5 gzip" in table


def test_benchmark_bad_input(tmp_path):
    with pytest.raises(ValueError, match="n_frames"):
        benchmark_write(tmp_path, (8, 8), 0)
    with pytest.raises(ValueError, match="does not exist"):
        benchmark_write(tmp_path / "nope", (8, 8), 1)
