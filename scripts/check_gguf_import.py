#!/usr/bin/env python3
"""Checks a `frugal import-gguf` output dir against transformers' own GGUF loading of the same file.

  /opt/frugal-venv/bin/python scripts/check_gguf_import.py --gguf FILE.gguf --out DIR [--text FILE.txt]
      [--ids-out FILE.ids] [--hf HF_DIR] [--ref-out tests/fixtures/gguf/smollm2_reference.json]

1. tensors: every tensor of DIR (bf16) against transformers' dequantized + un-permuted fp32 tensor
   (AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)) rounded to bf16: max |diff|;
   with --hf, also against an original HF checkpoint;
2. tokenizer: DIR/tokenizer.json (loaded by transformers and by PyPI tokenizers) against
   transformers' GGUF tokenizer on the text's lines (ids equal or not, per line);
3. perplexity of the text under both models (fp32, same ids: DIR's tokenizer, no special tokens):
   relative difference, which must be within 2%. --ids-out writes the ids for `frugal eval --data`.
Exit status 1 when a check fails.
"""
import argparse
import json
import math
import os
import sys

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

DEFAULT_TEXT = (
    "The old lighthouse keeper climbed the spiral stairs every evening at dusk. He trimmed the wick, "
    "polished the great lens, and watched the beam sweep across the grey water. Ships passed in the night, "
    "their crews never knowing his name, yet every one of them owed him a safe passage home. In 1887 a storm "
    "tore the roof from the cottage below, but the light never went out. When people asked him why he stayed "
    "so long in such a lonely place, he smiled and said that the sea was good company, and that somebody had "
    "to keep the lamp burning for those who were still out there."
)


def perplexity(model, ids, window=512):
    nll, n = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(ids) - 1, window):
            chunk = ids[s:s + window + 1]
            if len(chunk) < 2:
                break
            x = torch.tensor([chunk[:-1]])
            y = torch.tensor([chunk[1:]])
            logits = model(input_ids=x).logits.float()
            nll += torch.nn.functional.cross_entropy(logits[0], y[0], reduction="sum").item()
            n += y.numel()
    return math.exp(nll / n), nll / n, n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--out", required=True, help="frugal import-gguf output dir")
    ap.add_argument("--text", help="text file (default: a built-in paragraph)")
    ap.add_argument("--ids-out", help="write the text's ids here (for frugal eval --data)")
    ap.add_argument("--hf", help="original HF checkpoint dir to compare lossless tensors with")
    ap.add_argument("--ref-out", help="write {ids, loss/ppl of transformers' GGUF model} as JSON (test fixture)")
    a = ap.parse_args()
    text = open(a.text, encoding="utf-8").read() if a.text else DEFAULT_TEXT
    gdir, gname = os.path.dirname(os.path.abspath(a.gguf)), os.path.basename(a.gguf)
    ok = True

    ours = AutoModelForCausalLM.from_pretrained(a.out, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, dtype=torch.float32)
    sd_o, sd_r = ours.state_dict(), ref.state_dict()
    worst = 0.0
    for k, v in sd_o.items():
        if k not in sd_r:
            print(f"tensor {k}: missing in transformers' GGUF model")
            ok = False
            continue
        r = sd_r[k].to(torch.bfloat16).float()
        if r.shape != v.shape:
            print(f"tensor {k}: shape {tuple(v.shape)} vs transformers {tuple(r.shape)}")
            ok = False
            continue
        d = (v - r).abs().max().item()
        scale = r.abs().max().item() or 1.0
        worst = max(worst, d / scale)
    print(f"tensors: {len(sd_o)} compared with transformers' GGUF load, max |diff|/max|ref| = {worst:.3g}")
    ok &= worst <= 2 ** -8  # at most one bf16 rounding step apart
    if a.hf:
        hf = AutoModelForCausalLM.from_pretrained(a.hf, dtype=torch.float32).state_dict()
        for k, v in sd_o.items():
            e = (v - hf[k]).abs().max().item() / (hf[k].abs().max().item() or 1.0)
            print(f"  vs HF {k}: max rel diff {e:.3g}")

    tok_o = AutoTokenizer.from_pretrained(a.out)
    tok_t = Tokenizer.from_file(os.path.join(a.out, "tokenizer.json"))
    tok_r = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
    lines = [l for l in text.splitlines() if l.strip()] + [text]
    same_r = same_t = 0
    for l in lines:
        io = tok_o(l, add_special_tokens=False)["input_ids"]
        same_t += io == tok_t.encode(l, add_special_tokens=False).ids
        same_r += io == tok_r(l, add_special_tokens=False)["input_ids"]
    print(f"tokenizer: {same_t}/{len(lines)} texts equal to PyPI tokenizers on our tokenizer.json, "
          f"{same_r}/{len(lines)} equal to transformers' GGUF tokenizer")
    ok &= same_t == len(lines)
    rt = tok_o.decode(tok_o(text, add_special_tokens=False)["input_ids"])
    print(f"tokenizer: decode(encode(text)) == text: {rt == text}")

    ids = tok_o(text, add_special_tokens=False)["input_ids"]
    if a.ids_out:
        with open(a.ids_out, "w") as f:
            f.write(" ".join(map(str, ids)) + "\n")
    p_o, l_o, n = perplexity(ours, ids)
    p_r, l_r, _ = perplexity(ref, ids)
    rel = abs(p_o - p_r) / p_r
    print(json.dumps({"tokens": len(ids), "predicted": n, "ppl_ours": p_o, "loss_ours": l_o, "ppl_transformers_gguf": p_r,
                      "loss_transformers_gguf": l_r, "rel_diff": rel}))
    ok &= rel <= 0.02
    if a.ref_out:
        with open(a.ref_out, "w") as f:
            json.dump({"gguf": gname, "text": text, "ids": ids, "loss_transformers_gguf": l_r,
                       "ppl_transformers_gguf": p_r}, f, indent=1)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
