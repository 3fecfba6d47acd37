"""Saying why two tensors differ: `context` holds the types (Diagnosis, DivergenceContext, CODES), one
module per family of mistakes (softmax, loss, precision, structure) holds the diagnosers, and `catalogue`
lists them in order and runs them (`diagnose`). Imports go context <- families <- catalogue, never back."""
