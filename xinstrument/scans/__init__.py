"""xinstrument.scans: scan plans (tomosynthesis) and their runner."""
from .tomo import (PlanError, ScanAborted, ScanProgress, TomoPlan, TomoResult, TomoScan,
                   tomosynthesis)

__all__ = ["PlanError", "ScanAborted", "ScanProgress", "TomoPlan", "TomoResult", "TomoScan",
           "tomosynthesis"]
