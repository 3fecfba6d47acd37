"""A scalar reverse-mode autodiff engine in the style of micrograd: every number is a `Value` node.

Each operation makes a node that remembers its children and the local derivatives d(out)/d(child),
computed when the node is made. `backward()` orders the graph (children before parents) and applies
the chain rule once per edge: `child.grad += local * node.grad`.

The ordering is an iterative traversal with an explicit stack, never recursion: a dot product over
196 inputs summed one addition at a time (as the float32 layer of dtype_mix is) is already a chain of
some 400 nodes, and chains of any length (100,000 nodes and more) must not hit the recursion limit.

Arithmetic follows IEEE as numpy does: exp overflow gives inf, log(0) gives -inf, x/0 gives +-inf and
0/0 gives nan, instead of Python's exceptions. Plain Python floats mix freely with Values and are
constants (no gradient flows into them): that is also how a value is detached from the graph.
"""

from __future__ import annotations

import math
import struct

INF, NAN = math.inf, math.nan
_FLOAT32 = struct.Struct("f")


def exp(v):
    try:
        return math.exp(v)
    except OverflowError:
        return INF


def log(v):
    if v > 0:
        return math.log(v)
    return -INF if v == 0 else NAN


def div(a, b):
    if b:
        return a / b
    if a == 0 or a != a:
        return NAN
    return math.copysign(INF, a) * math.copysign(1.0, b)


def f32(v):
    """The nearest float32 to v, as a Python float (+-inf beyond float32's range)."""
    try:
        return _FLOAT32.unpack(_FLOAT32.pack(v))[0]
    except OverflowError:
        return math.copysign(INF, v)


class Value:
    """A scalar in a computation graph: `data`, `grad`, and how it was made."""

    __slots__ = ("data", "grad", "_prev", "_local", "_op", "_users")

    def __init__(self, data, _prev=(), _local=(), _op=""):
        self.data = data
        self.grad = 0.0
        self._prev = _prev    # the children this value was computed from
        self._local = _local  # d(self)/d(child) for each child
        self._op = _op
        self._users = 0       # backward()'s bookkeeping: 0 between calls

    def __repr__(self):
        return f"Value(data={self.data!r}, grad={self.grad!r})"

    # -- arithmetic; a plain float operand is a constant
    def __add__(self, other):
        if isinstance(other, Value):
            return Value(self.data + other.data, (self, other), (1.0, 1.0), "+")
        return Value(self.data + other, (self,), (1.0,), "+")

    __radd__ = __add__

    def __mul__(self, other):
        if isinstance(other, Value):
            return Value(self.data * other.data, (self, other), (other.data, self.data), "*")
        return Value(self.data * other, (self,), (other,), "*")

    __rmul__ = __mul__

    def __neg__(self):
        return Value(-self.data, (self,), (-1.0,), "neg")

    def __sub__(self, other):
        if isinstance(other, Value):
            return Value(self.data - other.data, (self, other), (1.0, -1.0), "-")
        return Value(self.data - other, (self,), (1.0,), "-")

    def __rsub__(self, other):  # other - self, other a constant
        return Value(other - self.data, (self,), (-1.0,), "-")

    def __truediv__(self, other):
        if isinstance(other, Value):
            out = div(self.data, other.data)
            # d(a/b)/da = 1/b, d(a/b)/db = -a/b**2 = -(a/b)/b
            return Value(out, (self, other), (div(1.0, other.data), -div(out, other.data)), "/")
        return Value(div(self.data, other), (self,), (div(1.0, other),), "/")

    def __rtruediv__(self, other):  # other / self, other a constant
        out = div(other, self.data)
        return Value(out, (self,), (-div(out, self.data),), "/")

    def exp(self):
        out = exp(self.data)
        return Value(out, (self,), (out,), "exp")

    def log(self):
        return Value(log(self.data), (self,), (div(1.0, self.data),), "log")

    def relu(self, floor=0.0):
        """max(self, floor): floor 0 is ReLU, floor -1 the shifted ReLU; nan stays nan."""
        return Value(max(self.data, floor), (self,), (float(self.data > floor),), "relu")

    def sigmoid(self):
        return 1.0 / (1.0 + (-self).exp())

    def f32(self):
        """Round to float32 (mixed precision): the value changes, the gradient passes straight through."""
        return Value(f32(self.data), (self,), (1.0,), "f32")

    @staticmethod
    def sum(values):
        """One node for a sum of many terms (a chain of `+` would do, with one node per term)."""
        values = tuple(values)
        return Value(sum(v.data for v in values), values, (1.0,) * len(values), "sum")

    # -- reverse mode
    def backward(self):
        """Fill `grad` of every node this value depends on with d(self)/d(node).

        Two passes over the graph, each with an explicit stack (no recursion, so any depth works):
        the first counts, for every node, the edges that reach it from the nodes using it; the second
        visits the nodes in topological order from `self` down, a node only once every node that uses
        it has added its share to `node.grad`, and passes the chain rule on to its children.
        """
        stack = [self]
        while stack:  # pass 1: count users (a node is expanded the first time it is reached)
            node = stack.pop()
            for child in node._prev:
                if not child._users:
                    stack.append(child)
                child._users += 1
        self.grad = 1.0
        stack = [self]
        while stack:  # pass 2: the chain rule, in topological order
            node = stack.pop()
            g = node.grad
            for child, local in zip(node._prev, node._local):
                child.grad += local * g
                child._users -= 1
                if not child._users:  # every user is done: child.grad is complete
                    stack.append(child)
