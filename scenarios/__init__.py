"""The bundled scenarios (TOML) and digits (data/), installed as package data so that a wheel finds them too."""

from pathlib import Path

SCENARIO_DIR = Path(__file__).resolve().parent
DATA_DIR = SCENARIO_DIR / "data"
