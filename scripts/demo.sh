#!/usr/bin/env bash
# The main job: train the NumPy MLP on real digits while recording a memstate trace of every step.
set -euo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "1. Dump the initial parameters once, for every implementation to load"
memstate init-params mnist14-relu -o "$OUT/mnist14-relu.params.json"

say "2. Train the NumPy implementation on 14x14 digits for 300 steps, recording every step"
memstate run mnist14-relu --impl numpy --params "$OUT/mnist14-relu.params.json" --steps 300 \
    -o "$OUT/numpy.memstate"

say "3. What the trace holds"
memstate show "$OUT/numpy.memstate" --points 7

say "4. The classic port: full 28x28 digits, 784-100-10, 3 epochs (no trace)"
memstate run mnist784-100-10 --impl numpy
