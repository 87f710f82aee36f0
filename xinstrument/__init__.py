"""xinstrument: control, acquisition and real-time restoration for scintillator-coupled X-ray
imaging benches."""
__version__ = "0.1.0"
