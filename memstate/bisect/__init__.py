"""Bisecting long runs: checkpoint runs searched for the first diverging interval (`search`), only that
interval replayed in full (`replay`), the run specs of both sides (`runspec`) and the result types (`result`)."""
