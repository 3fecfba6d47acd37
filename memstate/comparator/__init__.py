"""Comparing two traces: per-tensor metrics, dtype-aware tolerances, localisation of an error, the
streaming comparator that finds the first divergence, and the pairwise matrix over implementations.

Named `comparator` (as in Polygraphy) so that the function `memstate.compare` is never shadowed."""
