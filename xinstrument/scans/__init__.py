"""xinstrument.scans: plans as data and the one engine that runs them.

Plans: :class:`Snap`, :class:`Series`, :class:`References`, :class:`SingleReference`,
:class:`FocusScan`, :class:`TomoPlan` (tomosynthesis), :class:`NNPSMeasurement`,
:class:`MTFMeasurement`, or any object following the :class:`Plan` protocol. Run them with
``Instrument.run(plan)`` / ``Instrument.start(plan)``; follow them through ``Instrument.events``.
"""
from .engine import Engine, Plan, PlanAborted, PlanError, RunContext, RunHandle
from .events import EngineEvents, PlanInfo, PlanResult, Progress, Signal
from .plans import (FocusScan, MTFMeasurement, NNPSMeasurement, References, Series,
                    SingleReference, Snap)
from .tomo import ScanAborted, ScanProgress, TomoPlan, TomoResult, TomoScan, tomosynthesis

__all__ = ["Engine", "EngineEvents", "FocusScan", "MTFMeasurement", "NNPSMeasurement", "Plan",
           "PlanAborted", "PlanError", "PlanInfo", "PlanResult", "Progress", "References",
           "RunContext", "RunHandle", "ScanAborted", "ScanProgress", "Series", "Signal",
           "SingleReference", "Snap", "TomoPlan", "TomoResult", "TomoScan", "tomosynthesis"]
