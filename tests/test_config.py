"""Instrument configuration: valid files load, bad ones fail with the problem named."""
import pytest

from xinstrument.config import InstrumentConfig
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
[focus_stage]
port = "/dev/ttyUSB1"
soft_limits_um = [10, 300]
[rotation_stage]
port = "sim"
soft_limits_deg = [-20.0, 20.0]
[camera]
driver = "pco"
exposure_s = 0.5
[restoration]
profile = "sim-gos134"
method = "inverse"
"""))
    assert cfg.tube.dialect == "text" and cfg.tube.kv_max == 60.0
    assert cfg.focus_stage.soft_limits == (10.0, 300.0) and cfg.focus_stage.unit == "um"
    assert cfg.rotation_stage.soft_limits == (-20.0, 20.0) and cfg.rotation_stage.unit == "deg"
    assert cfg.camera.driver == "pco" and cfg.restoration.method == "inverse"
    assert cfg.uses_simulation      # the rotation stage is emulated


@pytest.mark.parametrize("text, message", [
    ("[tube]\nport = 5\n", "port must be str"),
    ("[tube]\nbaud = 9600\n", "unknown key"),
    ("[lasers]\n", "unknown section"),
    ("[tube]\ndialect = 'klingon'\n", "dialect must be"),
    ("[camera]\ndriver = 'webcam'\n", "unknown driver"),
    ("[camera]\nexposure_s = -1\n", "exposure_s must be > 0"),
    ("[focus_stage]\nsoft_limits_um = [5, 1]\n", "low < high"),
    ("[simulation]\nsensor_px = 3\n", "sensor_px"),
    ("[tube\n", "not valid TOML"),
])
def test_bad_config_names_the_problem(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        InstrumentConfig.load(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        InstrumentConfig.load(tmp_path / "nope.toml")


def test_simulated_benches():
    assert InstrumentConfig.simulated("panel-gos").restoration.profile == "sim-gos134"
    with pytest.raises(ConfigError, match="unknown simulated bench"):
        InstrumentConfig.simulated("cyclotron")
