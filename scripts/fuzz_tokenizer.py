#!/usr/bin/env python3
"""Random-string parity of `frugal tokenize` against PyPI tokenizers (a stress test beside the
committed golden fixture; CI does not run it).

  /opt/frugal-venv/bin/python scripts/fuzz_tokenizer.py --frugal build/frugal [--n 3000] [--seed 1]

Strings are random concatenations of pieces chosen to hit the corners of the pre-tokenizer
regexes and added-token matching (whitespace kinds, contractions, digits, marks, CJK, emoji/ZWJ,
'▁', embedded added tokens). Every tokenizer variant of tests/fixtures/tokenizer/golden.json is
written (patched) to a temp file; both implementations encode every string with and without
add_special_tokens. Exit status 1 on any mismatch.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

os.environ["RAYON_NUM_THREADS"] = "1"
from tokenizers import Tokenizer  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BASES = {
    "gpt2": os.path.join(ROOT, "..", "shared", "data", "tokenizers", "gpt2", "tokenizer.json"),
    "llama3": os.path.join(ROOT, "..", "shared", "data", "tokenizers", "llama3", "tokenizer.json"),
    "bytefallback": os.path.join(ROOT, "tests", "fixtures", "tokenizer", "bytefallback.json"),
}
POOL = list("abcXYZ019 \t\n\r.,!?'\"-_()[]{}<>|/\\") + [
    "  ", "\r\n", "'s", "'LL", "'t", "é", "e\u0301", "ß", "İ", "ſ", "日本", "语", "한", "👍",
    "👨\u200d👩", "\u200d", "\ufe0f", "\u0085", "\u00a0", "\u2028", "\u3000", "\u2581", "½", "٣",
    "Ⅻ", "<|eot_id|>", "<s>", "</s>", "<mask>", "frugal", " <mask> ", "<|endoftext|>",
    "<|begin_of_text|>", "123456", "\U0001F600", "\x01", "ǅ"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frugal", required=True)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    texts = ["".join(rng.choice(POOL) for _ in range(rng.randint(0, 30))) for _ in range(a.n)]
    tmp = tempfile.mkdtemp()
    inp = os.path.join(tmp, "fuzz.jsonl")
    with open(inp, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    golden = json.load(open(os.path.join(ROOT, "tests", "fixtures", "tokenizer", "golden.json")))
    total_bad = 0
    for v in golden["variants"]:
        j = json.load(open(BASES[v["base"]], encoding="utf-8"))
        j.update(v["patch"])
        path = os.path.join(tmp, v["name"] + ".json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(j, f)
        tok = Tokenizer.from_str(json.dumps(j))
        for special in (False, True):
            ref = [e.ids for e in tok.encode_batch(texts, add_special_tokens=special)]
            args = [a.frugal, "tokenize", "--tokenizer", path, "--input", inp]
            if special:
                args.append("--add-special")
            out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
            got = [list(map(int, l.split())) for l in out.split("\n")[:-1]]
            bad = [i for i in range(a.n) if i >= len(got) or got[i] != ref[i]]
            total_bad += len(bad)
            print(f"{v['name']} add_special={special}: {len(bad)} of {a.n} strings differ")
            for i in bad[:3]:
                print("   ", repr(texts[i]), "ref", ref[i], "frugal", got[i] if i < len(got) else None)
    sys.exit(1 if total_bad else 0)


if __name__ == "__main__":
    main()
