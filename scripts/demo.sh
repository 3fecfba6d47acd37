#!/usr/bin/env bash
# The main job: train on real digits while recording a memstate of every step, show that four independent
# implementations agree, then let memstate pinpoint the seed story's bug (global-max softmax).
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
# Bold headings only on a terminal, and never when NO_COLOR is set (https://no-color.org).
if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then BOLD=$'\033[1m' PLAIN=$'\033[0m'; else BOLD='' PLAIN=''; fi
say() { printf '\n%s== %s%s\n' "$BOLD" "$*" "$PLAIN"; }
run() { printf '$ %s\n' "$*"; "$@"; }
expect() {  # expect STATUS CMD...: run a command whose exit status is part of the story
    local want=$1; shift
    printf '$ %s\n' "$*"; "$@"; local got=$?
    if [ "$got" -ne "$want" ]; then echo "demo: expected exit status $want, got $got" >&2; exit 1; fi
}
set -e

say "1. Dump the initial parameters once, for every implementation to load"
run memstate init-params mnist14-relu -o "$OUT/mnist14-relu.params.json"

say "2. Train the NumPy MLP on 14x14 digits for 300 steps, recording every tensor of every step"
run memstate run mnist14-relu --impl numpy --params "$OUT/mnist14-relu.params.json" --steps 300 \
    -o "$OUT/numpy.memstate"
run memstate show "$OUT/numpy.memstate" --points 6

say "3. The classic port: full 28x28 digits, 784-100-10, 3 epochs"
run memstate run mnist784-100-10 --impl numpy -q

say "4. Four independent implementations, same params, every pair compared tensor by tensor"
set +e
expect 0 memstate diff --impls numpy,python,jax,scalar mnist14-relu --steps 5 \
    --params "$OUT/mnist14-relu.params.json" --keep "$OUT/impls" -q

say "5. One port with one bug (builtin sum ported as np.sum): memstate check needs no second run"
memstate run mnist14-relu --params "$OUT/mnist14-relu.params.json" --steps 20 -q \
    --variant softmax_sum=global -o "$OUT/port.memstate" > /dev/null
expect 1 memstate check "$OUT/port.memstate" --params "$OUT/mnist14-relu.params.json"

say "6. The seed story: global-max softmax trains well for over a thousand steps, then collapses. Where, and why?"
expect 1 memstate bisect story-global-max --lockstep --format text -o "$OUT/bisect.txt"
sed -n '1,12p' "$OUT/bisect.txt"
echo "   (full report: $OUT/bisect.txt)"
echo
echo "Traces and reports are in $OUT/."
