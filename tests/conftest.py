"""The suite's shared helpers (variant_cases) live in tests/; subfolders mirror the package's layers.

Hypothesis runs derandomized by default: `make test` explores the same examples on every machine and every
run, so CI never fails on an example that a different seed happened to draw (one property test found a
real limitation of `map --suggest` that way, on a seed CI had not drawn; docs/testing.md). `make fuzz`
sets HYPOTHESIS_PROFILE=explore to draw new examples, as does any run that asks for it.
"""

import os
import sys
from pathlib import Path

from hypothesis import settings

sys.path.insert(0, str(Path(__file__).resolve().parent))

settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))
