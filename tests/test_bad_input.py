"""The bad-input sweep: every malformed option, config and profile handed to the command line is
one clean line on stderr and exit code 2, never a traceback, and a file already acquired is
left as it was."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from xinstrument.cli import main
from xinstrument.config import example_config_path

ROOT = Path(__file__).resolve().parents[1]

# (argv, words the error must contain); "{cfg}" is replaced by a config file holding ``toml``
OPTION_CASES = [
    (["demo", "--seed", "-1"], "--seed: seed must be 0.."),
    (["demo", "--seed", "1e3"], "--seed: expected a whole number"),
    (["demo", "--seed", str(2**32)], "--seed: seed must be 0.."),
    (["demo", "--sensor-px", "0"], "--sensor-px"),
    (["demo", "--frames", "0"], "--frames: must be >= 1"),
    (["demo", "--exposure-s", "inf"], "--exposure-s: must be a finite number"),
    (["demo", "--exposure-s", "nan"], "--exposure-s: must be a finite number"),
    (["demo", "--exposure-s", "-0.1"], "--exposure-s: must be > 0"),
    (["demo", "--bench", "cyclotron"], "--bench: invalid choice"),
    (["acquire", "--kv", "inf", "OUT"], "--kv: must be a finite number"),
    (["acquire", "--kv", "-5", "OUT"], "--kv: must be > 0"),
    (["acquire", "--ua", "nan", "OUT"], "--ua: must be a finite number"),
    (["acquire", "--ua", "lots", "OUT"], "--ua: expected a number"),
    (["acquire", "--exposure-s", "0", "OUT"], "--exposure-s: must be > 0"),
    (["acquire", "--frames", "-3", "OUT"], "--frames: must be >= 1"),
    (["acquire"], "required: output"),
    (["focus", "--start-um", "nan", "--stop-um", "10"], "--start-um: must be a finite number"),
    (["focus", "--start-um", "0", "--stop-um", "inf"], "--stop-um: must be a finite number"),
    (["focus", "--start-um", "0", "--stop-um", "10", "--step-um", "0"], "--step-um: must be > 0"),
    (["restore", "IN", "--profile", "p", "--method", "wiener", "--device", "quantum"],
     "--device: unknown device 'quantum'"),
    (["restore", "IN", "--profile", "p", "--method", "wiener", "--device", "cuda"],
     "--device: device 'cuda' is not available"),
    (["restore", "IN", "--profile", "p", "--method", "wiener", "--device", "cuda:3"],
     "--device: device 'cuda:3' is not available"),
    (["restore", "IN", "--profile", "p", "--method", "telepathy"], "--method: invalid choice"),
    (["recon", "IN", "--device", "tpu"], "--device: unknown device 'tpu'"),
    (["nonsense"], "invalid choice: 'nonsense'"),
]

CONFIG_CASES = [
    ("[tube]\nport = 'sim'\nmodel = 'L0000'\n", "[tube]: model must be one of"),
    (None, "is not UTF-8 text"),                                   # written as Latin-1 below
    ("[tube]\nport = ''\n", "[tube]: port must not be empty"),
    ("[simulation]\nseed = -1\n", "[simulation]: seed must be in 0.."),
    ("[focus_stage]\nport = 'sim'\nvelocity = -5.0\n", "[focus_stage]: velocity must be > 0"),
    ("[simulation]\nwarmup_duration_s = -1\n", "[simulation]: warmup_duration_s must be in"),
    ("[tube]\nport = 'sim'\nwatchdog_s = -1\n", "[tube]: watchdog_s must be in"),
    ("[tube]\nport = 'sim'\ntimeout_s = 0\n", "[tube]: timeout_s must be in"),
    ("[tube]\nport = 'sim'\nkv_max = 500\n", "[tube]: kv_max must be in 40..130 kV"),
    ("[tube]\nport = 'sim'\nkv_max = -5\n", "[tube]: kv_max must be in 40..130 kV"),
    ("[tube]\nport = 'sim'\nua_max = \"lots\"\n", "[tube]: ua_max must be a number"),
    ("[tube]\nmodel = 'L9181-02'\n", "[tube]: port is required"),
    ("[tube]\nport = 'sim'\nkv_max = inf\n", "[tube]: kv_max must be finite"),
    ("[tube]\nport = 'sim'\nbaudrate = 12345\n", "[tube]: baudrate must be a standard rate"),
    ("[tube]\nport = 'socket://bench'\n", "[tube]: port must be socket://HOST:PORT"),
    ("[focus_stage]\nport = 'sim'\nsoft_limits_um = [400, 0]\n", "low < high"),
    ("[focus_stage]\nport = 'sim'\ncontroller_unit = 'furlong'\n",
     "[focus_stage]: controller_unit must be one of"),
    ("[camera]\ndriver = 'pco'\ninterface = 'carrier pigeon'\n", "[camera]: interface must be"),
    ("[camera]\nexposure_s = 0\n", "[camera]: exposure_s must be in"),
    ("[simulation]\nsensor_px = 1e6\n", "[simulation]: sensor_px must be a whole number"),
    ("[restoration]\ndevice = 'quantum'\n", "[restoration]: device must be"),
    ("[tube\nport = 'sim'\n", "is not valid TOML"),
    ("[lasers]\npower_w = 5\n", "unknown section"),
]


def _profile_cases(tmp_path: Path) -> list[tuple[Path, str]]:
    """Malformed profile folders: (folder, words of the error)."""
    from xinstrument.profiles import find_profile
    base = find_profile("sim-gos134")
    cases = []

    def fresh(name: str) -> Path:
        import copy
        folder = tmp_path / name
        p = copy.deepcopy(base)      # the shipped profile stays untouched
        p.weights = {}
        p.save(folder)
        return folder

    f = fresh("non-utf8")
    t = f / "profile.toml"
    t.write_bytes(t.read_bytes() + b"# \xe9talonnage\n")
    cases.append((f, "not UTF-8 text"))
    f = fresh("not-zip")
    (f / "arrays.npz").write_bytes(b"this is not an archive")
    cases.append((f, "not an .npz array archive"))
    f = fresh("huge")
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False,
                                               "shape": (2**31, 2**10)})
    with zipfile.ZipFile(f / "arrays.npz", "a") as zf:
        zf.writestr("bomb.npy", buf.getvalue())
    cases.append((f, "declares shape"))
    f = fresh("link-out")
    (f / "arrays.npz").rename(tmp_path / "stolen.npz")
    (f / "arrays.npz").symlink_to(tmp_path / "stolen.npz")
    cases.append((f, "outside the profile folder"))
    f = fresh("no-toml")
    (f / "profile.toml").unlink()
    cases.append((f, "missing profile.toml"))
    cases.append((tmp_path / "does-not-exist", "does not exist"))
    return cases


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:        # argparse
        code = exc.code
    err = capsys.readouterr().err
    return code, err


def _clean(code: int, err: str, words: str) -> str | None:
    """None when the error is clean; otherwise what is wrong with it."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if code != 2:
        return f"exit code {code}"
    if "Traceback" in err:
        return "traceback"
    if len(lines) != 1:
        return f"{len(lines)} lines: {err!r}"
    if words not in lines[0]:
        return f"message {lines[0]!r} lacks {words!r}"
    return None


def test_bad_input_sweep(tmp_path: Path, capsys) -> None:
    # a file already acquired: no failed command may touch it
    acquired = tmp_path / "acquired.h5"
    acquired.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 8)
    before = acquired.read_bytes()
    results: list[tuple[str, str | None]] = []

    for argv, words in OPTION_CASES:
        argv = [str(acquired) if a == "OUT" else str(tmp_path / "in.h5") if a == "IN" else a
                for a in argv]
        code, err = _run(argv, capsys)
        results.append((" ".join(argv), _clean(code, err, words)))

    for i, (text, words) in enumerate(CONFIG_CASES):
        cfg = tmp_path / f"bench{i}.toml"
        if text is None:
            cfg.write_bytes("[tube]\nport = 'sim'\n# réglage du générateur\n".encode("latin-1"))
        else:
            cfg.write_text(text)
        for cmd in (["acquire", "--config", str(cfg), "--overwrite", str(acquired)],
                    ["focus", "--config", str(cfg), "--start-um", "0", "--stop-um", "5"]):
            code, err = _run(cmd, capsys)
            results.append((" ".join(cmd) + f"  <{text!r}>", _clean(code, err, words)))

    for folder, words in _profile_cases(tmp_path):
        argv = ["restore", str(tmp_path / "in.h5"), "--profile", str(folder), "--method",
                "wiener"]
        code, err = _run(argv, capsys)
        results.append((" ".join(argv), _clean(code, err, words)))

    bad = [(what, why) for what, why in results if why is not None]
    print(f"\nbad inputs clean: {len(results) - len(bad)} / {len(results)}")
    assert acquired.read_bytes() == before, "a failed command changed an acquired file"
    assert not bad, "\n".join(f"{what}: {why}" for what, why in bad)


@pytest.mark.slow
def test_exit_code_through_the_installed_entry_point(tmp_path: Path) -> None:
    """The same contract seen from a shell: one line on stderr, exit status 2."""
    cfg = tmp_path / "bench.toml"
    cfg.write_text("[tube]\nport = 'sim'\nkv_max = 500\n")
    proc = subprocess.run([sys.executable, "-m", "xinstrument.cli", "acquire", "--config",
                           str(cfg), str(tmp_path / "out.h5")], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "kv_max must be in 40..130" in proc.stderr
    assert not (tmp_path / "out.h5").exists()


def test_real_bench_example_fails_cleanly_without_hardware(tmp_path: Path, capsys) -> None:
    """The shipped real-bench config on a machine without its serial ports: a clean error
    naming the port, not a traceback."""
    pytest.importorskip("serial")
    code, err = _run(["acquire", "--config", str(example_config_path("real-bench")),
                      str(tmp_path / "out.h5")], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "cannot open" in err or "PCO" in err or "pco" in err
