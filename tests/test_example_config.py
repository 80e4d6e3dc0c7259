"""examples/loom.toml documents every setting of the configuration file, and cannot drift
from engine/config.py (issue 14): each setting the file format knows is in it, each
commented-out default is Config's real default, every LOOM_* variable is named, and the
file loads as it is and with every default uncommented."""

from __future__ import annotations

import re
import tomllib
from dataclasses import fields
from pathlib import Path

from engine.config import _ENV, FILE_SETTINGS, SECTIONS, TABLES, Config, load_config
from engine.core.domain import Instrument
from engine.gateways.admission import AdmissionSettings

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "loom.toml"
SETTING = re.compile(r"^# (\w+ = .+)$")  # a commented-out setting, not prose


def uncommented() -> str:
    return "\n".join(SETTING.sub(r"\1", line) for line in EXAMPLE.read_text().splitlines()) + "\n"


def test_the_example_loads_as_it_is():
    cfg = load_config(str(EXAMPLE), env={})
    assert [i.symbol for i in cfg.instruments] == ["BTC-USD", "ETH-USD"]
    assert [(a.name, a.scale) for a in cfg.assets] == [("USD", 2), ("BTC", 8), ("ETH", 8)]
    assert set(cfg.api_keys.values()) == {"alice"} and set(cfg.ops_keys.values()) == {"oncall"}


def test_every_setting_is_in_the_example_with_its_real_default(tmp_path):
    raw = tomllib.loads(uncommented())
    defaults = Config()
    missing = [k for k in (*FILE_SETTINGS, *TABLES) if k not in raw]
    for section, keys in SECTIONS.items():
        missing += [f"[{section}] {k}" for k in keys if k not in raw.get(section, {})]
    assert not missing, f"examples/loom.toml lacks {missing}"
    for key in FILE_SETTINGS:
        value = raw[key]
        assert (Path(value) if key == "data_dir" else value) == getattr(defaults, key), key
    for section, keys in SECTIONS.items():
        for key, (attr, _kind) in keys.items():
            assert raw[section][key] == getattr(defaults, attr), f"[{section}] {key}"
    admission = AdmissionSettings()
    for f in fields(AdmissionSettings):
        assert raw["admission"][f.name] == getattr(admission, f.name), f"[admission] {f.name}"
    assert raw["cluster"] == defaults.cluster
    # the second instrument lists Instrument's defaults (but for the assets it trades), the
    # first account's role the default
    eth = raw["instruments"][1]
    money = {k: eth[k] for k in ("base", "quote", "contract_size")}
    assert Instrument(**eth) == Instrument(eth["symbol"], eth["tick_size"], **money)
    assert set(eth) == set(Instrument.__struct_fields__)  # every instrument field is shown
    assert raw["accounts"][0]["role"] == "trader"
    path = tmp_path / "all.toml"
    path.write_text(uncommented())
    load_config(str(path), env={})


def test_every_environment_variable_is_named():
    text = EXAMPLE.read_text()
    missing = [var for var in (*_ENV, "LOOM_CONFIG", "LOOM_ALLOW_PUBLIC_BIND") if var not in text]
    assert not missing, f"examples/loom.toml does not name {missing}"
