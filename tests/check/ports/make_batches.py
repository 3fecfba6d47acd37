"""make_batches.py -- stdlib-only helper: a small params file and batches file for trying the ports.

    python3 make_batches.py OUTDIR [--name NAME] [--seed N] [--activation relu|sigmoid]
        [--reduction mean|sum] [--steps 0,1,2,3,4] [--weight-scale S] [--b64]

Defaults: layers [6, 5, 3], batch 4, steps 0..4, x uniform in [0, 1], y random one-hot, relu, mean, lr 0.1,
seed 0. Writes OUTDIR/NAME.params.json and OUTDIR/NAME.batches.jsonl (NAME defaults to "tiny").
--steps gives the step numbers (may start above 0 and skip numbers); --weight-scale multiplies the initial
weights (40 makes logits large enough for softmax underflow); --b64 writes the params as "b64".
(memstate will produce the official files; this is only for testing the ports.)
"""
import base64, json, math, random, struct, sys


def tensor(name, shape, vals, b64=False, step=None):
    obj = {} if step is None else {"step": step}
    obj.update(name=name, shape=shape, dtype="float64")
    if b64:
        obj["b64"] = base64.b64encode(struct.pack("<%dd" % len(vals), *vals)).decode()
    else:
        obj["data"] = vals
    return obj


def main(argv):
    opts = {"--name": "tiny", "--seed": "0", "--activation": "relu", "--reduction": "mean",
            "--steps": "0,1,2,3,4", "--weight-scale": "1"}
    pos, b64, i = [], False, 0
    while i < len(argv):
        if argv[i] == "--b64":
            b64, i = True, i + 1
        elif argv[i] in opts:
            opts[argv[i]], i = argv[i + 1], i + 2
        else:
            pos, i = pos + [argv[i]], i + 1
    out = pos[0] if pos else "."
    rng = random.Random(int(opts["--seed"]))
    layers, batch, lr = [6, 5, 3], 4, 0.1
    scale = float(opts["--weight-scale"])
    params = []
    for i, (a, b) in enumerate(zip(layers[:-1], layers[1:]), start=1):
        params.append(tensor("L%d.W" % i, [a, b], [scale * rng.gauss(0, 1 / math.sqrt(a)) for _ in range(a * b)], b64))
        params.append(tensor("L%d.b" % i, [b], [rng.gauss(0, 0.1) for _ in range(b)], b64))
    name = opts["--name"]
    with open("%s/%s.params.json" % (out, name), "w") as f:
        f.write('{"format": "memstate.params", "version": 1, "meta": {"writer": "make_batches.py"}, "tensors": [\n'
                + ",\n".join(json.dumps(t) for t in params) + "\n]}\n")
    settings = {"layers": layers, "activation": opts["--activation"], "loss_reduction": opts["--reduction"],
                "learning_rate": lr, "dtype": "float64", "batch_size": batch}
    lines = [json.dumps({"format": "memstate.trace", "version": 1,
                         "meta": {"impl": "make_batches", "kind": "batches", "settings": settings}})]
    for k in [int(s) for s in opts["--steps"].split(",")]:
        x = [rng.random() for _ in range(batch * layers[0])]
        y = []
        for _ in range(batch):
            row = [0.0] * layers[-1]
            row[rng.randrange(layers[-1])] = 1.0
            y += row
        lines += [json.dumps(tensor("x", [batch, layers[0]], x, step=k)),
                  json.dumps(tensor("y", [batch, layers[-1]], y, step=k)), json.dumps({"step": k, "end": True})]
    with open("%s/%s.batches.jsonl" % (out, name), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("%s/%s.params.json %s/%s.batches.jsonl" % (out, name, out, name))


if __name__ == "__main__":
    main(sys.argv[1:])
