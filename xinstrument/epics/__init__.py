"""EPICS IOC serving the Instrument over Channel Access and PV Access (docs/epics.md)."""
