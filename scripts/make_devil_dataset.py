#!/usr/bin/env python3
"""make_devil_dataset.py: Ambrose Bierce's *The Devil's Dictionary* (Debian package dict-devil,
public domain) as chat instruction pairs for `frugal prepare --format chat`.

Reads the dictd database (devil.index: "headword<TAB>offset<TAB>length" with offsets in dictd's
base64; devil.dict.dz: dictzip, which is plain gzip to a reader), keeps each entry's first
paragraph (the definition proper, without the verses and anecdotes that often follow), cleans the
whitespace and the _italic_ markers, and writes

  {"messages": [{"role": "user", "content": "Define \"Abasement\" in the style of Ambrose Bierce's Devil's Dictionary."},
                {"role": "assistant", "content": "Abasement, n. A decent and customary mental attitude ..."}]}

one per line: a fixed seeded subset of short entries for training (--train) and a few other ones
held out (--heldout) for the before/after generation. Python 3 standard library only: users run it.

Usage: make_devil_dataset.py [--dict-dir /usr/share/dictd] --train OUT.jsonl --heldout OUT.jsonl
                             [--n-train 300] [--n-heldout 5] [--max-chars 200] [--seed 0]
"""
import argparse
import gzip
import json
import os
import random
import re
import sys

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
PROMPT = "Define \"{}\" in the style of Ambrose Bierce's Devil's Dictionary."


def die(msg):
    sys.exit(f"make_devil_dataset: {msg}")


def b64_number(s, where):
    """dictd's index numbers: base64 digits, most significant first."""
    v = 0
    for c in s:
        d = B64.find(c)
        if d < 0:
            die(f"{where}: '{s}' is not a dictd base64 number")
        v = v * 64 + d
    return v


def read_entries(dict_dir):
    """[(index headword, raw entry text)] in index order, without the 00database* metadata."""
    index_path = os.path.join(dict_dir, "devil.index")
    dict_path = os.path.join(dict_dir, "devil.dict.dz")
    for p in (index_path, dict_path):
        if not os.path.isfile(p):
            die(f"{p} not found (install the Debian package dict-devil)")
    try:
        with gzip.open(dict_path, "rb") as f:
            data = f.read()
    except OSError as e:
        die(f"{dict_path}: cannot decompress: {e}")
    entries = []
    with open(index_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            where = f"{index_path}:{lineno}"
            parts = line.split("\t")
            if len(parts) != 3:
                die(f"{where}: expected 3 tab-separated fields, got {len(parts)}")
            head, off, n = parts[0], b64_number(parts[1], where), b64_number(parts[2], where)
            if head.startswith("00database") or head.startswith("00-database"):
                continue
            if off + n > len(data):
                die(f"{where}: entry '{head}' ends at byte {off + n}, past the end of {dict_path} ({len(data)} bytes)")
            entries.append((head, data[off:off + n].decode("utf-8", errors="replace")))
    return entries


def clean(text):
    """Collapse whitespace runs to one space; drop the _italic_ underscores and the {braces} of
    cross-references ("See {HUSBAND}")."""
    text = re.sub(r"_([^_]+)_", r"\1", text)
    text = re.sub(r"\{([^}]*)\}", r"\1", text)
    return re.sub(r"\s+", " ", text).strip()


# "ABASEMENT, n.  A decent ..." -> headword "ABASEMENT", rest "n.  A decent ..."
HEAD_RE = re.compile(r"^([A-Z][A-Z0-9'\-. ]*?),\s+(.*)$", re.S)


def parse_entry(head, raw):
    """(display headword, definition) from one raw entry, or None when it does not fit the form
    'HEADWORD, pos.  text' or its first paragraph introduces a quotation (ends with ':')."""
    first_par = re.split(r"\n\s*\n", raw.strip("\n"), maxsplit=1)[0]
    m = HEAD_RE.match(first_par)
    if not m:
        return None
    word = m.group(1).strip()
    body = clean(m.group(2))
    if not body or body.endswith(":") or len(body.split()) < 4:
        return None
    # "ADAM'S APPLE" -> "Adam's apple": sentence case reads naturally in a prompt.
    display = word[0] + word[1:].lower()
    return display, f"{display}, {body}"


def pair(word, answer):
    return {"messages": [{"role": "user", "content": PROMPT.format(word)},
                         {"role": "assistant", "content": answer}]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dict-dir", default="/usr/share/dictd", help="where devil.index and devil.dict.dz are")
    ap.add_argument("--train", required=True, help="output JSONL of training pairs")
    ap.add_argument("--heldout", required=True, help="output JSONL of held-out pairs (not in --train)")
    ap.add_argument("--n-train", type=int, default=300)
    ap.add_argument("--n-heldout", type=int, default=5)
    ap.add_argument("--max-chars", type=int, default=200, help="keep definitions up to this many characters")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    entries = read_entries(a.dict_dir)
    if len(entries) < 500:
        die(f"{a.dict_dir}/devil.index: only {len(entries)} entries; expected about 1000 (damaged package?)")
    # set(): some index headwords share one entry ("babe" and "baby").
    parsed = sorted(set(p for p in (parse_entry(h, r) for h, r in entries) if p is not None))
    short = [p for p in parsed if len(p[1]) <= a.max_chars]
    need = a.n_train + a.n_heldout
    if len(short) < need:
        die(f"only {len(short)} entries of at most {a.max_chars} characters, {need} requested "
            f"(raise --max-chars or lower --n-train)")
    # `parsed` is sorted, so the subset depends only on the data and the seed.
    random.Random(a.seed).shuffle(short)
    heldout, train = short[:a.n_heldout], short[a.n_heldout:need]

    for path, rows in ((a.train, train), (a.heldout, heldout)):
        d = os.path.dirname(path)
        if d:
            os.makedirs(d, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for word, answer in rows:
                f.write(json.dumps(pair(word, answer), ensure_ascii=False) + "\n")
    chars = sum(len(ans) for _, ans in train)
    print(f"make_devil_dataset: {len(entries)} entries, {len(parsed)} parsed, {len(short)} of <= {a.max_chars} chars; "
          f"wrote {len(train)} training pairs ({chars} answer chars) to {a.train} and {len(heldout)} held out to {a.heldout}")


if __name__ == "__main__":
    main()
