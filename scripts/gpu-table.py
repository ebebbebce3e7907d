#!/usr/bin/env python3
"""Prints the table scripts/gpu-check.sh ends with, from the logs and reports it wrote in DIR:
test results, attention kernel throughput, and bodega vs llama.cpp on a synthetic Llama-3.2-1B.
With `--ab DIR ROUNDS LABEL...`, the table scripts/gpu-ab.sh ends with: each revision's figures per
round (reports tagged `-LABEL-rROUND`) and their ratios to the first revision's."""
import json
import os
import re
import sys


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def single_stream_rates(path, depth=None):
    """Mean prompt and decode tok/s of a bodega report's single-stream runs (those at `depth`, if given)."""
    rep = read(path)
    runs = [r for r in json.loads(rep)["single_stream"] if depth is None or r["depth"] == depth] if rep else []
    if not runs:
        return None, None
    mean = lambda k: sum(r[k] for r in runs) / len(runs)
    return mean("prefill_tok_s"), mean("decode_tok_s")


def bodega_single(d, t, tag=""):
    """bodega's single stream from an empty context (tag: "-eager", "-sampled" runs)."""
    return single_stream_rates(os.path.join(d, f"bodega-{t}-single{tag}.json"))


def bodega_row(d, t, n, tag=""):
    """The sweep's row with N requests in flight (tag "-eager": the --eager run), or an empty dict."""
    rep = read(os.path.join(d, f"bodega-{t}-sweep{tag}.json"))
    if not rep:
        return {}
    report = json.loads(rep)
    labels = [p["label"] for p in report["plan"].get("rows", [])
              if p["classes"] and p["classes"][0]["load"].get("concurrency") == n]
    for row in report["rows"]:
        if row["target"] == "A" and row["row"] in labels:
            return row
    return {}


def bodega_batch(d, t, n, tag=""):
    """Engine decode tok/s of the sweep's row with N requests in flight."""
    return (bodega_row(d, t, n, tag).get("engine_mean") or {}).get("decode_tok_s")


def bodega_health(d, t, n):
    """Failed requests and CUDA graph captures (means over the row's repetitions) of that row."""
    row = bodega_row(d, t, n)
    failed = (row.get("mean") or {}).get("failed")
    captures = (row.get("engine_mean") or {}).get("graph_captures")
    return f"{fmt(failed)} / {fmt(captures)}"


def llama_bench_rates(log, suffix=""):
    """llama-bench's pp512 and tg128 tok/s from its table (`suffix`: " @ dN" for a -d run)."""
    pp = re.search(rf"\|\s*pp512{suffix}\s*\|\s*([\d.]+)", log)
    tg = re.search(rf"\|\s*tg128{suffix}\s*\|\s*([\d.]+)", log)
    return (float(pp.group(1)) if pp else None), (float(tg.group(1)) if tg else None)


def llama_single(d, t):
    """llama-bench's single stream from an empty context."""
    return llama_bench_rates(read(os.path.join(d, f"llama-{t}-bench.log")))


def bodega_depth(d, t, depth):
    """bodega's single stream after `depth` tokens of context (`bench --depth`)."""
    return single_stream_rates(os.path.join(d, f"bodega-{t}-depth.json"), depth)


def llama_depth(d, t, depth):
    """llama-bench's pp512 and tg128 after `depth` tokens of context (its -d)."""
    return llama_bench_rates(read(os.path.join(d, f"llama-{t}-depth.log")), f" @ d{depth}")


def llama_batch(d, t, n):
    log = read(os.path.join(d, f"llama-{t}-batched.log"))
    for line in log.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 8 and cells[0] == "128" and cells[1] == "128" and cells[2] == str(n):
            return float(cells[7])  # S_TG t/s
    return None


def fmt(x):
    return "—" if x is None else f"{x:,.0f}"


def ratio(a, b):
    return "—" if a is None or b is None else f"{a / b:.2f}"


def has_any(d, patterns):
    """Whether DIR holds a file of any of `patterns` (for either weight type, any tag)."""
    return any(os.path.exists(os.path.join(d, p.format(t=t, tag=tag)))
               for p in patterns for t in ["f16", "q8_0"] for tag in ["", "-eager", "-sampled"])


def engines_table(d):
    """bodega (with graphs, --eager, sampled) against llama.cpp at depth 0 and 1–64 sequences."""
    print("| synthetic Llama-3.2-1B | bodega | bodega --eager | bodega T 0.8 | llama.cpp | bodega / eager "
          "| T 0.8 / greedy | bodega / llama.cpp | bodega failed / graph captures |")
    print("|---|---|---|---|---|---|---|---|---|")
    for t in ["f16", "q8_0"]:
        (bp, bt), (ep, et), (sp, st) = (bodega_single(d, t, tag) for tag in ["", "-eager", "-sampled"])
        lp, lt = llama_single(d, t)
        print(f"| {t} decode tg128 (tok/s) | {fmt(bt)} | {fmt(et)} | {fmt(st)} | {fmt(lt)} | {ratio(bt, et)} "
              f"| {ratio(st, bt)} | {ratio(bt, lt)} | |")
        print(f"| {t} prompt pp512 (tok/s) | {fmt(bp)} | {fmt(ep)} | {fmt(sp)} | {fmt(lp)} | {ratio(bp, ep)} "
              f"| {ratio(sp, bp)} | {ratio(bp, lp)} | |")
        for n in [1, 4, 16, 64]:
            b, e, s = (bodega_batch(d, t, n, tag) for tag in ["", "-eager", "-sampled"])
            l = llama_batch(d, t, n)
            print(f"| {t} aggregate decode, {n} seqs (tok/s) | {fmt(b)} | {fmt(e)} | {fmt(s)} | {fmt(l)} | {ratio(b, e)} "
                  f"| {ratio(s, b)} | {ratio(b, l)} | {bodega_health(d, t, n)} |")


def depth_table(d):
    """Both engines' single stream after 4,096 and 16,384 tokens of context."""
    print("| single stream after a long context | bodega | llama.cpp | bodega / llama.cpp |")
    print("|---|---|---|---|")
    for t in ["f16", "q8_0"]:
        for depth in [4096, 16384]:
            (bp, bt), (lp, lt) = bodega_depth(d, t, depth), llama_depth(d, t, depth)
            print(f"| {t} decode tg128 @ d{depth} (tok/s) | {fmt(bt)} | {fmt(lt)} | {ratio(bt, lt)} |")
            print(f"| {t} prompt pp512 @ d{depth} (tok/s) | {fmt(bp)} | {fmt(lp)} | {ratio(bp, lp)} |")


def ab_table(d, rounds, labels):
    """Each revision's figures per round, then each later revision's ratio to the first, per round."""
    tags = {label: [f"-{label}-r{r}" for r in range(1, rounds + 1)] for label in labels}
    base = labels[0]
    header = labels + [f"{label} / {base}" for label in labels[1:]]
    order = " / ".join(str(r) for r in range(1, rounds + 1))
    print(f"| synthetic Llama-3.2-1B, rounds {order} | " + " | ".join(header) + " |")
    print("|---" * (len(header) + 1) + "|")
    cell = lambda xs: " / ".join(fmt(x) for x in xs)
    ratios = lambda xs, ys: " / ".join(ratio(x, y) for x, y in zip(xs, ys))
    for t in ["f16", "q8_0"]:
        rows = [(f"{t} decode tg128 (tok/s)", lambda tag: bodega_single(d, t, tag)[1]),
                (f"{t} prompt pp512 (tok/s)", lambda tag: bodega_single(d, t, tag)[0])]
        rows += [(f"{t} aggregate decode, {n} seqs (tok/s)", lambda tag, n=n: bodega_batch(d, t, n, tag))
                 for n in [1, 4, 16, 64]]
        for name, value in rows:
            figures = {label: [value(tag) for tag in tags[label]] for label in labels}
            if all(x is None for xs in figures.values() for x in xs):
                continue
            cells = [cell(figures[label]) for label in labels]
            cells += [ratios(figures[label], figures[base]) for label in labels[1:]]
            print(f"| {name} | " + " | ".join(cells) + " |")


def main():
    if sys.argv[1] == "--ab":
        ab_table(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
        return
    d = sys.argv[1]
    print(f"device: {read(os.path.join(d, 'device.txt')).strip()}")
    tests = read(os.path.join(d, "gpu-tests.log"))
    for line in tests.splitlines():
        if line.startswith("test result:") or re.match(r"(decode|prefill) attention|decode step|measured peak|teacher-forced|.*requests identical|graphs vs eager|gemv ", line):
            print(line)
    if has_any(d, ["bodega-{t}-single{tag}.json", "bodega-{t}-sweep{tag}.json", "llama-{t}-bench.log"]):
        print()
        engines_table(d)
    if has_any(d, ["bodega-{t}-depth.json", "llama-{t}-depth.log"]):
        print()
        depth_table(d)


if __name__ == "__main__":
    main()
