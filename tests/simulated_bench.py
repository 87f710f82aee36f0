"""A connected simulated bench ready to acquire: X-rays on at the twin's calibration settings,
the stage at the thick screen's best focus, averaged darks and flats taken."""
from __future__ import annotations

from xinstrument.config import InstrumentConfig
from xinstrument.instrument import Instrument


def bench_at_focus(sensor_px: int, seed: int, exposure_s: float, references: int) -> Instrument:
    """The real Instrument on the twin (PCB sample ``seed``), ``references`` frames averaged into
    the dark and the flat; the caller disconnects it (X-rays off)."""
    cfg = InstrumentConfig.simulated(sensor_px=sensor_px, sample="pcb", seed=seed)
    cfg.simulation.warmup_duration_s = 0.2
    cfg.camera.exposure_s = exposure_s
    inst = Instrument(cfg).connect()
    try:
        inst.warm_up()
        st = inst.twin.fixed_state
        inst.set_voltage_kv(st.voltage_kv)
        inst.set_current_ua(st.current_ua)
        inst.xray_on()
        inst.move_focus_um(inst.twin.best_focus_um("thick", st.voltage_kv))
        inst.take_darks(references)
        inst.take_flats(references)
    except BaseException:
        inst.disconnect()
        raise
    return inst
