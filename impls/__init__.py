"""Independent implementations of the same MLP, each behind the interface in docs/implementations.md.

Each module stands alone: it may use memstate's formats and recorder, never another module's maths.
"""
