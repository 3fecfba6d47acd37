"""Checking one trace on its own: every recorded tensor re-derived from its recorded inputs with the
float64 reference (`recompute`), compared on the spot (`checker`)."""
