"""xinstrument.acquisition: frame pipeline, averaging, dark/flat/defect correction, focus scans."""
from .averaging import FrameAverager, average_frames, mean_rejecting_outliers
from .correction import (
                         CorrectionError,
                         DriftRegistrar,
                         FlatFieldCorrector,
                         average_series,
                         build_defect_map,
                         estimate_shift,
                         find_flat_defects,
                         find_hot_pixels,
                         flat_field,
                         fourier_shift,
                         replace_defects,
                         subtract_dark,
)
from .focus import (
                         FocusAxis,
                         FocusCurve,
                         FocusError,
                         FocusScanAborted,
                         camera_acquirer,
                         coarse_fine_focus,
                         fit_peak,
                         focus_scan,
                         sharpness,
)
from .pipeline import (
                         AcquisitionPipeline,
                         CallbackSink,
                         CameraStalled,
                         HDF5Sink,
                         LiveView,
                         MemorySink,
                         PipelineError,
                         PipelineStats,
                         ProcessedFrame,
)

__all__ = [
    "AcquisitionPipeline", "CallbackSink", "CameraStalled", "CorrectionError", "DriftRegistrar",
    "FlatFieldCorrector", "FocusAxis", "FocusCurve", "FocusError", "FocusScanAborted",
    "FrameAverager", "HDF5Sink", "LiveView", "MemorySink", "PipelineError", "PipelineStats",
    "ProcessedFrame", "average_frames", "average_series", "build_defect_map", "camera_acquirer",
    "coarse_fine_focus", "estimate_shift", "find_flat_defects", "find_hot_pixels", "fit_peak",
    "flat_field", "focus_scan", "fourier_shift", "mean_rejecting_outliers", "replace_defects",
    "sharpness", "subtract_dark",
]
