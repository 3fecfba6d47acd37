"""memstate's reading, writing, diff and check against their floors, measured side by side (issue 14).

Every ratio is memstate's speed over its floor's speed on the same data in the same run (absolute times
on a shared machine are noise; ratios much less so). The floors are what the job cannot beat in Python:

- diff of two identical binary traces   vs  np.array_equal over the same arrays, already in memory
                                            (the detail column adds the files' own floors: each step file
                                            mapped and compared whole by np.array_equal, page faults included;
                                            or read in 4 MB pieces into two reused buffers and compared)
- diff of a copy off by 1e-11 (passes)  vs  np.allclose over the same arrays in memory (same rtol/atol)
                                            (the detail column adds memstate's tolerance pass alone, in
                                            memory and over the mapped step files: the files' floor)
- diff of two JSONL traces              vs  orjson.loads + np.asarray of every line of both files
- writing a JSONL trace                 vs  orjson.dumps(OPT_SERIALIZE_NUMPY) of the same arrays
- check, per step, on a binary trace    vs  one numpy training step of the same net, with one BLAS thread
                                            (a ratio of times: lower is better; the issue's target is <= 3)

The net is the issue's: 784-800-10, batch 64, float64, 20 steps (12 MB a step, 245 MB a trace; the JSONL
rows use its first 4 steps). `--hidden 128 --steps 36` gives the smaller net earlier runs used, where the
per-tensor and per-step costs weigh more. The diff rows time what `memstate diff` does for its text report
(compare(detail="divergent"): ULPs, cosine and elementwise rel only for tensors out of tolerance); the
detail column adds the ratio with the metrics a JSON or HTML report shows for its kept steps
(detail="shown").

Times are CPU time of this process (time.process_time, the best of --repeat runs; the JSONL reader's
thread included): every job here runs on one core with BLAS held to one thread, and on a machine shared
with other work CPU time is what other processes disturb least. The --jobs rows are wall time (their work
is in other processes; the thresholds below which diff and check stay in one process are set to 0, to
measure the mechanism itself). Also printed: BLAS capped against uncapped (CPU time of check) and peak heap
memory at half and all of the steps.

Usage: python benchmarks/bench_compare.py [--steps N] [--hidden H] [--jsonl-steps N] [--repeat R]
"""

from __future__ import annotations

import argparse
import mmap
import os
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import orjson

from memstate.blas import blas_threads
from memstate.check import parallel as check_parallel
from memstate.check.checker import check_trace
from memstate.comparator import parallel
from memstate.comparator.compare import compare
from memstate.comparator.metrics import within_tolerance
from memstate.comparator.tolerance import DEFAULTS
from memstate.formats.convert import convert_trace
from memstate.formats.recorder import Recorder
from memstate.formats.trace import open_trace, read_trace
from memstate.runner.harness import run
from memstate.runner.initparams import scenario_params
from memstate.runner.scenario import load_scenario
from training_step import step_function

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "mnist784-100-10.toml"


def best(fn, repeat: int, clock=time.process_time, before=None) -> float:
    """The shortest time of `repeat` calls by `clock` (CPU time unless told; the least disturbed run);
    `before`, when given, is called ahead of each, untimed."""
    times = []
    for _ in range(repeat):
        if before is not None:
            before()
        began = clock()
        fn()
        times.append(clock() - began)
    return min(times)


def wall(fn, repeat: int) -> float:
    return best(fn, repeat, time.perf_counter)


def scenario_for(tmp: Path, hidden: int):
    text = SCENARIO.read_text().replace("layers = [784, 100, 10]", f"layers = [784, {hidden}, 10]")
    text = text.replace("batch_size = 32", "batch_size = 64")
    path = tmp / "bench.toml"
    path.write_text(text)
    return load_scenario(str(path))


def perturbed_copy(src: Path, dst: Path, rel: float) -> None:
    """Trace `src` with every value scaled by (1 + rel): within the float64 tolerance, but not bit-identical."""
    steps = read_trace(src)
    with Recorder(dst, {"steps": len(steps)}) as rec:
        for s in steps:
            with rec.step(s.index):
                for name, arr in s.tensors.items():
                    rec.record(name, arr * (1 + rel))


def mapped_equal(a: Path, b: Path) -> bool:
    """The files' own floor: every step file of both traces mapped and compared by np.array_equal as 8-byte
    words (what reading them from the page cache costs, page faults included, with no bookkeeping)."""
    same = True
    for fa in sorted(a.glob("step-*.safetensors")):
        with open(fa, "rb") as fh, open(b / fa.name, "rb") as gh:
            ma = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            mb = mmap.mmap(gh.fileno(), 0, access=mmap.ACCESS_READ)
            n = min(len(ma), len(mb)) // 8
            same &= bool(np.array_equal(np.frombuffer(ma, np.uint64, n), np.frombuffer(mb, np.uint64, n)))
    return same


def read_equal(a: Path, b: Path, chunk: int = 4 << 20) -> bool:
    """The files' other floor: every step file of both traces read with readinto in 4 MB pieces into two
    reused buffers and compared by np.array_equal (one copy from the page cache, no page faults: what
    memstate.formats.alongside does for the bytes of identical steps), with no bookkeeping."""
    ba, bb = np.empty(chunk, np.uint8), np.empty(chunk, np.uint8)
    va, vb = memoryview(ba.data), memoryview(bb.data)
    same = True
    for fa in sorted(a.glob("step-*.safetensors")):
        with open(fa, "rb", buffering=0) as fh, open(b / fa.name, "rb", buffering=0) as gh:
            while n := fh.readinto(va):
                m = gh.readinto(vb)
                w = min(n, m) // 8 * 8
                same &= n == m and bool(np.array_equal(ba[:w].view(np.uint64), bb[:w].view(np.uint64)))
    return same


def mapped_within(a: Path, c: Path, rtol: float, atol: float) -> bool:
    """The passing diff's files' floor: both traces' step files mapped (pages faulted in as read) and every
    tensor put through memstate's own tolerance pass, metrics.within_tolerance, with no bookkeeping."""
    ok = True
    with open_trace(a) as ra, open_trace(c) as rc:
        for s, t in zip(ra.steps(mapped=True, populate=False), rc.steps(mapped=True, populate=False)):
            for name, x in s.tensors.items():
                ok &= within_tolerance(x, t.tensors[name], rtol, atol)[0]
    return ok


def train_step_seconds(scenario, repeat: int) -> float:
    one = step_function("numpy", scenario)
    one()
    with blas_threads(1):  # the fastest numpy step here: the floor check is held to
        return best(one, repeat * 3)


def line(what: str, ratio: float, target: str, detail: str) -> None:
    print(f"  {what:<44} {ratio:7.2f}x   {target:<8} {detail}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="training steps in the binary traces (default 20)")
    ap.add_argument("--hidden", type=int, default=800, help="width of the hidden layer (default 800: issue 14's net)")
    ap.add_argument("--jsonl-steps", type=int, default=4,
                    help="steps written as JSONL for the JSONL lines (default 4: 105 MB a file)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the fastest counts (default 3)")
    args = ap.parse_args()
    r = args.repeat
    tmp = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    try:
        began = time.perf_counter()
        scenario = scenario_for(tmp, args.hidden)
        a, b, c = tmp / "a.memstate", tmp / "b.memstate", tmp / "c.memstate"
        run(scenario, "numpy", steps=args.steps, out=a, evaluate=False)
        shutil.copytree(a, b)
        perturbed_copy(a, c, 1e-11)
        steps_a, steps_b, steps_c = read_trace(a), read_trace(b), read_trace(c)
        arrays = [(s.tensors[n], t.tensors[n]) for s, t in zip(steps_a, steps_b) for n in s.tensors]
        close = [(s.tensors[n], t.tensors[n]) for s, t in zip(steps_a, steps_c) for n in s.tensors]
        nbytes = sum(x.nbytes for x, _ in arrays)
        tol = DEFAULTS["float64"]
        print(f"memstate bench_compare: 784-{args.hidden}-10 batch 64 float64, {args.steps} steps, "
              f"{nbytes / 1e6:.1f} MB per side; load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        parallel.MIN_BYTES = check_parallel.MIN_BYTES = 0  # measure --jobs 2 itself, whatever the size
        print(f"  {'what':<44} {'ratio':>8}   {'target':<8} detail")

        t_eq = best(lambda: all(np.array_equal(x, y) for x, y in arrays), r)
        t_mapped = best(lambda: mapped_equal(a, b), r)
        t_read = best(lambda: read_equal(a, b), r)
        t_d1 = best(lambda: compare(a, b, detail="divergent"), r)
        t_ds = best(lambda: compare(a, b), r)
        line("diff identical binary / np.array_equal", t_eq / t_d1, ">= 0.5",
             f"{2 * nbytes / t_d1 / 1e9:.2f} GB/s vs {2 * nbytes / t_eq / 1e9:.2f} GB/s; JSON report: "
             f"{t_eq / t_ds:.2f}x; vs the files' floors, mapped: {t_mapped / t_d1:.2f}x, read in 4 MB pieces: "
             f"{t_read / t_d1:.2f}x (those floors / np.array_equal: {t_eq / t_mapped:.2f}x, {t_eq / t_read:.2f}x)")
        t_ac = best(lambda: all(np.allclose(x, y, rtol=tol.rtol, atol=tol.atol) for x, y in close), r)
        t_wt = best(lambda: all(within_tolerance(x, y, tol.rtol, tol.atol)[0] for x, y in close), r)
        t_mw = best(lambda: mapped_within(a, c, tol.rtol, tol.atol), r)
        t_p1 = best(lambda: compare(a, c, detail="divergent"), r)
        t_ps = best(lambda: compare(a, c), r)
        assert compare(a, c).verdict == "agree"
        line("diff 1e-11 copy (passes) / np.allclose", t_ac / t_p1, ">= 1",
             f"{2 * nbytes / t_p1 / 1e9:.2f} GB/s vs {2 * nbytes / t_ac / 1e9:.2f} GB/s; JSON report: "
             f"{t_ac / t_ps:.2f}x; its tolerance pass alone (metrics.within_tolerance) in memory: {t_ac / t_wt:.2f}x, "
             f"over the mapped files (the files' floor): {t_ac / t_mw:.2f}x")
        w_d1 = wall(lambda: compare(a, b, detail="divergent", jobs=1), r)
        w_d2 = wall(lambda: compare(a, b, detail="divergent", jobs=2), r)
        line("diff --jobs 2 / --jobs 1 (wall time)", w_d1 / w_d2, "> 1",
             f"{w_d2:.2f} s vs {w_d1:.2f} s, identical traces, {nbytes / 1e6:.0f} MB a side")

        aj, bj = tmp / "a.jsonl", tmp / "b.jsonl"
        jsteps = steps_a[:args.jsonl_steps]
        with Recorder(aj, {"steps": len(jsteps)}) as rec:
            for s in jsteps:
                with rec.step(s.index):
                    for name, arr in s.tensors.items():
                        rec.record(name, arr)
        shutil.copy(aj, bj)
        text = aj.stat().st_size

        def floor_read() -> None:
            for path in (aj, bj):
                with open(path, "rb") as fh:
                    for raw in fh:
                        obj = orjson.loads(raw)
                        if "data" in obj:
                            np.asarray(obj["data"], dtype=np.float64)

        t_fr = best(floor_read, max(1, r - 1))
        t_jd = best(lambda: compare(aj, bj, detail="divergent"), max(1, r - 1))
        line("diff JSONL / orjson.loads+np.asarray", t_fr / t_jd, ">= 0.8",
             f"{2 * text / t_jd / 1e6:.0f} MB/s vs {2 * text / t_fr / 1e6:.0f} MB/s of text")

        def floor_write() -> None:
            for s in jsteps:
                for arr in s.tensors.values():
                    orjson.dumps(arr.reshape(-1), option=orjson.OPT_SERIALIZE_NUMPY)

        written: list[Path] = []

        def record_jsonl() -> None:
            # A new file each run, the last one deleted first, outside the timed part (`untimed`): neither
            # the truncation of an old file nor memory the machine never gave the page cache before (on a
            # virtual machine that cost ten times the writing itself) is the writer's work.
            with Recorder(written[-1], {"steps": len(jsteps)}) as rec:
                for s in jsteps:
                    with rec.step(s.index):
                        for name, arr in s.tensors.items():
                            rec.record(name, arr)

        def untimed() -> None:
            if written:
                written[-1].unlink()
            written.append(tmp / f"w{len(written)}.jsonl")

        t_fw = best(floor_write, max(1, r - 1))
        t_w = best(record_jsonl, max(2, r), before=untimed)
        written[-1].unlink()
        aw = tmp / "aw.memstate"
        convert_trace(aj, aw)
        t_c1 = wall(lambda: convert_trace(aw, tmp / "c1.jsonl", jobs=1), 1)
        t_c2 = wall(lambda: convert_trace(aw, tmp / "c2.jsonl", jobs=2), 1)
        line("write JSONL / orjson.dumps(numpy)", t_fw / t_w, ">= 0.5",
             f"{text / t_w / 1e6:.0f} MB/s of text; convert binary->JSONL --jobs 2 vs 1: {t_c1 / t_c2:.2f}x")

        t_step = train_step_seconds(scenario, r)
        start = scenario_params(scenario)  # made once: He-initialising 784x800 weights is not check's work
        t_check = best(lambda: check_trace(a, params=start), r) / args.steps
        line("check per step / numpy training step", t_check / t_step, "<= 3",
             f"{t_check * 1e3:.1f} ms vs {t_step * 1e3:.1f} ms (lower is better)")

        capped = best(lambda: check_trace(a), 1)
        os.environ["MEMSTATE_BLAS_THREADS"] = "0"
        free = best(lambda: check_trace(a), 1)
        os.environ.pop("MEMSTATE_BLAS_THREADS")
        line("check CPU time, BLAS uncapped / capped", free / capped, "> 1",
             f"{free:.2f} s vs {capped:.2f} s of CPU (threads: one vs the BLAS default)")
        w_c1 = wall(lambda: check_trace(a, params=scenario_params(scenario), jobs=1), r)
        w_c2 = wall(lambda: check_trace(a, params=scenario_params(scenario), jobs=2), r)
        line("check --jobs 2 / --jobs 1 (wall time)", w_c1 / w_c2, "> 1",
             f"{w_c2:.2f} s vs {w_c1:.2f} s, a clean trace, {nbytes / 1e6:.0f} MB")

        def peak(steps: int) -> float:
            tracemalloc.start()
            compare(aj, bj, max_steps=steps)
            top = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            return top / 1e6

        half, full = peak(len(jsteps) // 2), peak(len(jsteps))
        line("peak memory, all steps / half the steps", full / half, "~1",
             f"{full:.0f} MB vs {half:.0f} MB of heap (JSONL diff, tracemalloc)")
        print(f"  ({time.perf_counter() - began:.0f} s in all)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
