"""Instrument configuration: valid files load, shipped examples drive the real drivers, every bad
value fails with one error naming the section and the key."""
import dataclasses

import pytest

from drivers.emulators import AxisSpec, GcsEmulator, TubeEmulator
from drivers.stage import GcsAxis, GcsController, StageLimitError
from drivers.xray import HamamatsuTube, TubeLimitError
from xinstrument.config import InstrumentConfig, example_config_path, example_configs
from xinstrument.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "bench.toml"
    p.write_text(text)
    return p


def test_full_config_loads(tmp_path):
    cfg = InstrumentConfig.load(write(tmp_path, """
[tube]
port = "socket://127.0.0.1:4001"
dialect = "text"
model = "L12161-07"
kv_max = 60
baudrate = 9600
[focus_stage]
port = "/dev/ttyUSB1"
soft_limits_um = [10, 300]
controller_unit = "mm"
velocity_limits_um_s = [1, 1000]
velocity = 200
[rotation_stage]
port = "sim"
soft_limits_deg = [-20.0, 20.0]
[camera]
driver = "pco"
exposure_s = 0.5
interface = "USB 3.0"
pixel_size_um = 6.5
[restoration]
profile = "sim-gos134"
method = "inverse"
"""))
    assert cfg.tube.dialect == "text" and cfg.tube.kv_max == 60.0
    assert isinstance(cfg.tube.kv_max, float) and cfg.tube.baudrate == 9600
    assert cfg.focus_stage.soft_limits == (10.0, 300.0) and cfg.focus_stage.unit == "um"
    assert cfg.focus_stage.scale == 1000.0 and cfg.focus_stage.velocity_limits == (1.0, 1000.0)
    assert not cfg.focus_stage.references_on_connect          # a real axis: only when asked
    assert cfg.rotation_stage.soft_limits == (-20.0, 20.0) and cfg.rotation_stage.unit == "deg"
    assert cfg.rotation_stage.references_on_connect           # an emulated one references
    assert cfg.camera.driver == "pco" and cfg.camera.interface == "USB 3.0"
    assert cfg.restoration.method == "inverse"
    assert cfg.uses_simulation      # the rotation stage is emulated


BAD = [
    # the cases first
    ("[tube]\nport = 'sim'\nkv_max = 500\n", "[tube]: kv_max must be in 40..130 kV"),
    ("[tube]\nport = 'sim'\nkv_max = -5\n", "[tube]: kv_max must be in 40..130 kV"),
    ("[tube]\nport = 'sim'\nua_max = 'lots'\n", "[tube]: ua_max must be a number"),
    ("[tube]\nmodel = 'L9181-02'\n", "[tube]: port is required"),
    ("[tube]\nport = 'sim'\nmodel = 'L0000'\n", "[tube]: model must be one of"),
    ("[tube]\nport = ''\n", "[tube]: port must not be empty"),
    ("[tube]\nport = '   '\n", "[tube]: port must not be empty"),
    ("[simulation]\nseed = -1\n", "[simulation]: seed must be in 0.."),
    ("[focus_stage]\nport = 'sim'\nvelocity = -3\n", "[focus_stage]: velocity must be > 0"),
    ("[simulation]\nwarmup_duration_s = -2\n", "[simulation]: warmup_duration_s must be in"),
    ("[tube]\nport = 'sim'\nwatchdog_s = -1\n", "[tube]: watchdog_s must be in"),
    ("[tube]\nport = 'sim'\ntimeout_s = 0\n", "[tube]: timeout_s must be in"),
    ("[tube]\nport = 'sim'\nkv_max = inf\n", "[tube]: kv_max must be finite"),
    ("[tube]\nport = 'sim'\nkv_max = nan\n", "[tube]: kv_max must be finite"),
    # types, ranges, consistency
    ("[tube]\nport = 5\n", "[tube]: port must be a string"),
    ("[tube]\nport = 'sim'\nbaud = 9600\n", "unknown key"),
    ("[tube]\nport = 'sim'\nbaudrate = 9601\n", "[tube]: baudrate must be a standard rate"),
    ("[tube]\nport = 'sim'\nbaudrate = 96e2\n", "[tube]: baudrate must be a whole number"),
    ("[tube]\nport = 'sim'\nretries = true\n", "[tube]: retries must be a whole number"),
    ("[tube]\nport = 'sim'\nkv_max = true\n", "[tube]: kv_max must be a number"),
    ("[tube]\nport = 'sim'\ntimeout_s = 2\nwatchdog_s = 1\n",
     "[tube]: watchdog_s must be at least timeout_s"),
    ("[tube]\nport = 'socket://host'\n", "[tube]: port must be socket://HOST:PORT"),
    ("[tube]\nport = 'socket://host:99999'\n", "[tube]: port must be socket://HOST:PORT"),
    ("[tube]\nport = 'http://host:80'\n", "[tube]: port has an unknown URL scheme"),
    ("[tube]\nport = 'ttyUSB0'\n", "[tube]: port must be \"sim\", a serial device"),
    ("[tube]\nport = 'sim'\ndialect = 'klingon'\n", "[tube]: dialect must be one of"),
    ("[tube]\nport = 'sim'\ndriver = 'varian'\n", "[tube]: driver must be one of hamamatsu"),
    ("[tube]\nport = 'sim'\nmodel = 7\n", "[tube]: model must be a string"),
    ("[tube]\nport = 'sim'\nramp_allowance_s = -1\n", "[tube]: ramp_allowance_s must be in"),
    ("[tube]\nport = 'sim'\nwarmup_timeout_s = 0\n", "[tube]: warmup_timeout_s must be in"),
    ("[lasers]\n", "unknown section"),
    ("tube = 3\n", "[tube]: expected a table"),
    ("[camera]\ndriver = 'webcam'\n", "[camera]: driver must be one of simulated, pco"),
    ("[camera]\nexposure_s = -1\n", "[camera]: exposure_s must be in"),
    ("[camera]\nexposure_s = 0\n", "[camera]: exposure_s must be in"),
    ("[camera]\ndriver = 'pco'\ninterface = 'Bluetooth'\n", "[camera]: interface must be one of"),
    ("[camera]\ndriver = 'pco'\npixel_size_um = 0\n", "[camera]: pixel_size_um must be in"),
    ("[camera]\ndriver = 'pco'\nserial = -4\n", "[camera]: serial must be >= 0"),
    ("[camera]\ninterface = 'USB 3.0'\n", "[camera]: interface applies to driver = \"pco\""),
    ("[focus_stage]\nport = 'sim'\nsoft_limits_um = [5, 1]\n", "low < high"),
    ("[focus_stage]\nport = 'sim'\nsoft_limits_um = [0, inf]\n", "low < high, finite"),
    ("[focus_stage]\nport = 'sim'\nsoft_limits_um = 'all'\n", "soft_limits_um must be"),
    ("[focus_stage]\nport = 'sim'\nsoft_limits = [0, 1]\n", "use soft_limits_um"),
    ("[focus_stage]\nport = 'sim'\nsoft_limits_deg = [0, 1]\n", "unknown key"),
    ("[focus_stage]\nport = 'sim'\nvelocity_limits_um_s = [0, 10]\n", "0 < low < high"),
    ("[focus_stage]\nport = 'sim'\nvelocity = 5000\nvelocity_limits_um_s = [1, 100]\n",
     "[focus_stage]: velocity must lie inside velocity_limits_um_s"),
    ("[focus_stage]\nport = 'sim'\ncontroller_unit = 'deg'\n",
     "[focus_stage]: controller_unit must be one of um, mm"),
    ("[rotation_stage]\nport = 'sim'\ncontroller_unit = 'mm'\n",
     "[rotation_stage]: controller_unit must be one of deg"),
    ("[focus_stage]\nport = 'sim'\naxis = 'A B'\n", "[focus_stage]: axis must be a GCS axis"),
    ("[focus_stage]\nport = 'sim'\naxis = 1\n", "[focus_stage]: axis must be a string"),
    ("[focus_stage]\nport = 'sim'\nbaudrate = 0\n", "[focus_stage]: baudrate must be a standard"),
    ("[focus_stage]\nport = 'sim'\nmax_wait_s = 0\n", "[focus_stage]: max_wait_s must be in"),
    ("[focus_stage]\nport = 'sim'\nreference_on_connect = 'yes'\n",
     "[focus_stage]: reference_on_connect must be true or false"),
    ("[focus_stage]\nsoft_limits_um = [0, 10]\n", "[focus_stage]: port is required"),
    ("[simulation]\nsensor_px = 3\n", "[simulation]: sensor_px must be in 16..4096"),
    ("[simulation]\nsensor_px = 64.5\n", "[simulation]: sensor_px must be a whole number"),
    ("[simulation]\nbench = 'cyclotron'\n", "[simulation]: bench must be one of"),
    ("[simulation]\nsample = 'cat'\n", "[simulation]: sample must be one of"),
    ("[restoration]\ndevice = 'quantum'\n", "[restoration]: device must be cpu, cuda"),
    ("[restoration]\nmethod = ''\n", "[restoration]: method must not be empty"),
    ("[storage]\nfolder = 3\n[storage.x]\n", None),          # storage keys are storage's own
    ("[tube\n", "not valid TOML"),
]


@pytest.mark.parametrize("text, message", BAD)
def test_bad_config_names_the_problem(tmp_path, text, message):
    if message is None:
        InstrumentConfig.load(write(tmp_path, text))
        return
    with pytest.raises(ConfigError) as ei:
        InstrumentConfig.load(write(tmp_path, text))
    msg = str(ei.value)
    assert message in msg and "\n" not in msg.strip() and str(tmp_path) in msg


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        InstrumentConfig.load(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="is a folder"):
        InstrumentConfig.load(tmp_path)
    p = tmp_path / "latin1.toml"
    p.write_bytes(b"[tube]\nport = 'sim'\n# r\xe9glage\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 23"):
        InstrumentConfig.load(p)


def test_simulated_benches():
    assert InstrumentConfig.simulated("panel-gos").restoration.profile == "sim-gos134"
    with pytest.raises(ConfigError, match="unknown simulated bench"):
        InstrumentConfig.simulated("cyclotron")
    with pytest.raises(ConfigError, match="seed must be in"):
        InstrumentConfig.simulated(seed=-1)


def test_shipped_examples_load_and_the_simulated_one_is_the_default():
    names = {p.name for p in example_configs()}
    assert {"real-bench.toml", "real-bench-text-dialect.toml",
            "simulated-bench.toml"} <= names
    for p in example_configs():
        InstrumentConfig.load(p)
    sim = InstrumentConfig.load(example_config_path("simulated-bench"))
    assert dataclasses.replace(sim, source_path=None) == InstrumentConfig.simulated()
    with pytest.raises(ConfigError, match="shipped: real-bench"):
        example_config_path("mars-rover")


def test_real_bench_example_is_a_real_bench():
    cfg = InstrumentConfig.load(example_config_path("real-bench"))
    assert not cfg.uses_simulation
    assert cfg.tube.baudrate == 38400 and cfg.focus_stage.baudrate == 115200
    assert cfg.focus_stage.controller_unit == "mm" and cfg.focus_stage.scale == 1000.0
    assert cfg.camera.driver == "pco" and cfg.camera.pixel_size_um == 6.5
    assert cfg.focus_stage.reference_on_connect is False
    text = InstrumentConfig.load(example_config_path("real-bench-text-dialect"))
    assert text.tube.dialect == "text" and text.tube.baudrate == 9600


def test_real_bench_example_drives_the_real_drivers(tmp_path):
    """The example's settings, pointed at the emulators, produce working drivers: the tube's
    site limits are enforced before sending, the stage works in um on a controller in mm and
    refuses velocities outside its data-sheet range."""
    cfg = InstrumentConfig.load(example_config_path("real-bench"))
    tube_emu = TubeEmulator(model=cfg.tube.model, warmup_needed=False)
    stage_emu = GcsEmulator({"1": AxisSpec("mm", 0.0, 5.0, 2.0, initial=1.0, referenced=True)})
    try:
        tube = HamamatsuTube(tube_emu.serve_tcp(), **cfg.tube.driver_kwargs())
        tube.connect()
        try:
            with pytest.raises(TubeLimitError, match="110 kV"):
                tube.set_voltage_kv(120)        # inside the model, outside the site limit
            tube.set_voltage_kv(100)
        finally:
            tube.close()
        s = cfg.focus_stage
        ctl = GcsController(stage_emu.serve_tcp(), **s.controller_kwargs())
        ctl.connect()
        try:
            ax = GcsAxis(ctl, s.axis, **s.axis_kwargs())
            assert ax.position == pytest.approx(1000.0)          # 1 mm reported, um driven
            ax.velocity = s.velocity
            assert stage_emu._axes["1"].velocity == pytest.approx(0.5)   # mm/s on the wire
            with pytest.raises(StageLimitError, match="outside the configured range"):
                ax.velocity = 5000.0
            ax.servo = True
            ax.move_to(1500.0)
            assert stage_emu.position("1") == pytest.approx(1.5)
        finally:
            ctl.close()
    finally:
        tube_emu.close()
        stage_emu.close()


def test_instrument_never_references_an_axis_without_reference_on_connect():
    """An unreferenced real axis with reference_on_connect = false: connect refuses, and not a
    single reference command reaches the controller."""
    from xinstrument.errors import InstrumentError
    from xinstrument.instrument import Instrument
    emu = GcsEmulator({"1": AxisSpec("mm", 0.0, 0.4, 1.0, initial=0.1)})
    try:
        cfg = InstrumentConfig.from_dict({
            "tube": {"port": "sim"},
            "focus_stage": {"port": emu.serve_tcp(), "controller_unit": "mm",
                            "reference_on_connect": False}})
        inst = Instrument(cfg, state_file=None)
        with pytest.raises(InstrumentError, match="not referenced .* reference_on_connect"):
            inst.connect()
        assert not any(c.split()[0] in ("FRF", "SVO", "MOV") for c in emu.commands_received)
        assert "FRF? 1" in emu.commands_received
    finally:
        emu.close()
