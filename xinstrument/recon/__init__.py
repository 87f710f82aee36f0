"""xinstrument.recon: tomosynthesis geometry and reconstruction (shift-and-add, FBP, SIRT)."""
from .geometry import GeometryError, ReconGrid, TomoGeometry
from .io import load_scan, read_reconstruction, save_reconstruction
from .methods import METHODS, Reconstruction, ReconError, parse_heights, reconstruct
from .projector import PlaneProjector

__all__ = ["METHODS", "GeometryError", "PlaneProjector", "ReconError", "ReconGrid",
           "Reconstruction", "TomoGeometry", "load_scan", "parse_heights", "read_reconstruction",
           "reconstruct", "save_reconstruction"]
