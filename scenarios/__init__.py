"""The bundled scenarios (TOML) and digits (data/), installed as `memstate.scenarios` package data so that a
wheel finds them too; located through importlib.resources."""

from importlib.resources import files
from pathlib import Path

SCENARIO_DIR = Path(str(files(__name__)))
DATA_DIR = SCENARIO_DIR / "data"
