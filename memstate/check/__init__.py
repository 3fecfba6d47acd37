"""Checking one trace on its own: every recorded tensor re-derived from its recorded inputs with the
float64 reference, compared on the spot.

Modules: `checker` (check_trace: the walk over the steps and the result), `step` (one step's operations),
`recompute` (the rules: each canonical tensor as an operation of the reference), `infer` (the settings:
declared, inferred, fitted), `opcompare` (one operation against its recomputation, with tolerances),
`invariants` (reference-free checks), `result` (the frozen result types), `state` (the walk's accumulator).
"""
