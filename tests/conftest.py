"""The suite's shared helpers (variant_cases) live in tests/; subfolders mirror the package's layers."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
