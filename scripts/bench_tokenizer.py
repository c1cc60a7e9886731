#!/usr/bin/env python3
"""Tokenizer throughput: `frugal tokenize` against PyPI tokenizers, same text, same thread count.

  /opt/frugal-venv/bin/python scripts/bench_tokenizer.py --frugal build/frugal [--mb 10]

The text is English prose: the paragraphs of /usr/share/common-licenses/GPL-3 (Debian's
base-files) repeated to --mb megabytes, one JSONL line per paragraph. PyPI tokenizers runs with
RAYON_NUM_THREADS=1 (encode_batch on one thread, and a plain encode loop); frugal runs with
OMP_NUM_THREADS=1 and reports its own parse+encode time (--stats). Rates are per CPU second
(process time), so other load on a shared machine does not distort them. The ids are compared.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
from tokenizers import Tokenizer  # noqa: E402  (after the thread settings)

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared", "data", "tokenizers")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frugal", required=True)
    ap.add_argument("--mb", type=float, default=10.0)
    ap.add_argument("--source", default="/usr/share/common-licenses/GPL-3",
                    help="comma-separated text files, split into paragraphs")
    ap.add_argument("--tokenizers", default="gpt2,llama3")
    a = ap.parse_args()

    paras = []
    for src in a.source.split(","):
        text = open(src, encoding="utf-8", errors="replace").read()
        paras += [p.strip() for p in text.split("\n\n") if p.strip()]
    texts, size = [], 0
    while size < a.mb * 1e6:
        for p in paras:
            texts.append(p)
            size += len(p.encode("utf-8"))
    tmp = tempfile.mkdtemp()
    jsonl = os.path.join(tmp, "bench.jsonl")
    with open(jsonl, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    print(f"text: {size / 1e6:.1f} MB in {len(texts)} lines from {a.source}")

    for name in a.tokenizers.split(","):
        path = os.path.join(SHARED, name, "tokenizer.json")
        tok = Tokenizer.from_file(path)
        # CPU seconds (process_time), so other load on the machine does not count.
        t0 = time.process_time()
        ref = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
        t_batch = time.process_time() - t0
        t0 = time.process_time()
        for t in texts:
            tok.encode(t, add_special_tokens=False)
        t_loop = time.process_time() - t0

        res = {}
        for threads in (1,):
            env = dict(os.environ, OMP_NUM_THREADS=str(threads))
            p = subprocess.run([a.frugal, "tokenize", "--tokenizer", path, "--input", jsonl, "--stats"],
                               capture_output=True, text=True, env=env, check=True)
            mbs = float(re.search(r"([0-9.]+) MB/s per CPU second", p.stderr).group(1))
            res[threads] = mbs
            got = [list(map(int, l.split())) if l else [] for l in p.stdout.split("\n")[:-1]]
            bad = sum(1 for x, y in zip(got, ref) if x != y) + abs(len(got) - len(ref))
        print(f"{name}: PyPI tokenizers 1 thread: encode_batch {size / t_batch / 1e6:.2f} MB/s, "
              f"encode loop {size / t_loop / 1e6:.2f} MB/s | frugal tokenize 1 thread {res[1]:.2f} MB/s "
              f"(incl. JSON parsing) | {sum(map(len, ref))} tokens, lines differing: {bad}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
