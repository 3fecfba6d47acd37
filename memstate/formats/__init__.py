"""The file formats (docs/format.md): params files, traces in JSONL and binary, the recorder, conversion.

Nothing here knows about networks or training: a trace is named tensors per step, and these modules read
and write them exactly (every bit, -0 and nan included).
"""
