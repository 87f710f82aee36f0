"""HDF5 scan storage (NeXus NXtomo + Data Exchange, SWMR while recording) and TIFF export.

Public API::

    ScanWriter(path, frame_shape, dtype, *, metadata, restored, restored_extras, swmr,
               compression, overwrite)
    ScanReader(path, *, swmr=False)
    recover(path) -> int          # make a file left by a killed writer ordinary and final
    export_tiff(h5_path, out_path, which="projections", *, multipage=True) -> list[Path]
    benchmark_write(folder, frame_shape, n_frames, dtype) -> dict
    StorageError
"""
from .bench import benchmark_write
from .errors import StorageError
from .reader import ScanReader
from .recover import recover
from .tiff import export_tiff
from .writer import DEFAULT_COMPRESSION, ScanWriter

__all__ = ["DEFAULT_COMPRESSION", "ScanReader", "ScanWriter", "StorageError", "benchmark_write", "export_tiff", "recover"]
