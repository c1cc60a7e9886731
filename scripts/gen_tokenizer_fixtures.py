#!/usr/bin/env python3
"""Golden tokenizer fixtures from PyPI `tokenizers` (tests/test_tokenizer.cpp reads them).

Run in the fixture venv:  /opt/frugal-venv/bin/python scripts/gen_tokenizer_fixtures.py
Writes tests/fixtures/tokenizer/:
  - bytefallback.json: a small Llama-2 / TinyLlama style tokenizer TRAINED here with tokenizers
    (models.BPE(byte_fallback=True, unk_token=None), 256 <0xXX> byte tokens, normalizer
    Sequence[Prepend("▁"), Replace(" ", "▁")], no pre-tokenizer, decoder Sequence[Replace,
    ByteFallback, Fuse, Strip], post_processor TemplateProcessing "<s> $A") plus a few added
    tokens with lstrip / rstrip / single_word / normalized set, so those paths are covered.
  - golden.json: the corpus (lines with whitespace runs, digits, NFC and NFD accents, CJK, emoji
    with ZWJ sequences, code, contractions, embedded special tokens) and, for each tokenizer
    variant, the ids of every line with add_special_tokens False and True, their decode, and
    the decode of random id sequences (invalid UTF-8 from byte tokens included).
Variants: gpt2 and llama3 are the real files in ../shared/data/tokenizers (not copied here; the
llama3 vocabulary is Meta's, Llama 3 Community License); some variants patch one top-level key of
a base file (the patch is stored in golden.json, the C++ test applies the same patch):
  - llama3_bos: Meta's own post_processor (ByteLevel + TemplateProcessing with <|begin_of_text|>);
  - gpt2_digits: SmolLM2's pre_tokenizer Sequence[Digits(individual), ByteLevel];
  - bytefallback_metaspace: newer Llama conversions, Metaspace(prepend_scheme first) instead of
    the normalizer.
The BPE trainer breaks count ties in hash order, so each run trains a slightly different (equally
valid) byte-fallback tokenizer: bytefallback.json and golden.json must come from the same run.
"""
import copy
import json
import os
import random

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "tokenizer")
SHARED = os.path.join(HERE, "..", "..", "shared", "data", "tokenizers")
os.makedirs(OUT, exist_ok=True)

# ---- corpus --------------------------------------------------------------------------------
# Prose written for this fixture (also the training text of the byte-fallback tokenizer).
PROSE = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm afternoon sun.",
    "A frugal engineer measures twice, allocates once, and frees every buffer she borrows.",
    "In the beginning the model knew nothing; after a thousand steps it knew a little more.",
    "Rivers carve valleys slowly, but a flood can move a mountain of gravel in a single night.",
    "She said that the train would leave at seven, yet the platform was empty at half past six.",
    "Memory is cheap until it runs out, and then it is the most expensive thing you own.",
    "Tokenizers split text into pieces; the pieces become numbers, and the numbers become vectors.",
    "Every morning the baker lit the oven before dawn and sang songs that nobody else remembered.",
    "The committee met on Tuesday, argued until Thursday, and agreed on Friday to meet again.",
    "Light travels fast, but news of a bargain travels faster through a crowded market square.",
    "He wrote the letter three times, tore it up twice, and finally sent the shortest version.",
    "Gradient descent walks downhill in the dark, feeling the slope with every careful step.",
    "The library closed at nine, so the students read their notes under the streetlights outside.",
    "Old maps show sea monsters where the sailors were afraid to go and unknown lands beyond.",
    "When the wind changed direction, the sailors trimmed the sails and the ship leaned into it.",
    "Good tests fail loudly when something breaks and stay quiet when everything is fine.",
    "The garden was full of tomatoes, beans, and a pumpkin that grew larger than the wheelbarrow.",
    "Numbers like 3.14159, 2.71828 and 1.41421 appear in the strangest corners of mathematics.",
    "They're sure it's fine, but we'd rather check twice; you'll thank us later, won't you?",
    "Quantized weights keep four bits per value, while the small adapters learn in full precision.",
    "The old clock in the hall struck thirteen, and everybody pretended not to have noticed.",
    "Snow fell on the village all night, and by morning the roads had disappeared entirely.",
    "If a program compiles on the first try, the wise programmer becomes suspicious at once.",
    "Bread, cheese, olives and a glass of water made a fine lunch on the hillside that day.",
    "The river otter slid down the muddy bank, splashed into the water, and surfaced with a fish.",
    "Questions are cheaper than mistakes, so ask early, ask often, and write down the answers.",
    "At the end of the long road stood a small inn with a green door and a crooked chimney.",
    "The orchestra tuned for a minute, fell silent, and then the first violin began to play.",
    "Each layer normalizes its input, attends to the past, and passes the result to the next.",
    "He counted the stars until he fell asleep, and dreamed of numbers that never ended.",
]

SPECIAL = [
    "Hello world",
    "Hello World! How are you today?",
    "   Hello   world   ",
    "<|begin_of_text|>Hello<|eot_id|>",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "text<|endoftext|>more text <|endoftext|> spaced <|endoftext|>",
    "<|endoftext|>",
    "<s>hello</s> and <unk> inside <s> text",
    "almost special <|endoftext| and <|eot_id and <|begin_of_text|",
    "nested <<|eot_id|>> and <|eot_id|><|eot_id|>",
    "the <mask> token, a <mask>  with spaces and<mask>glued",
    "frugal things: frugality, frugal, Frugal and frugal!",
    "<0x41> is not a byte token in text",
]

WHITESPACE = [
    "",
    " ",
    "  ",
    "\n",
    "\n\n\n",
    "two  spaces and   three   spaces",
    "tabs\tand\t\ttabs\t",
    "line one\nline two\n\nline four\n",
    "windows\r\nline\r\n\r\nend\r\n",
    "trailing spaces   ",
    "   leading spaces",
    " \t \n \r\n mixed \t\n",
    "a\u00a0b non-breaking\u00a0\u00a0space",
    "ideographic\u3000space\u3000\u3000",
    "line\u2028separator and para\u2029graph",
    "next\u0085line control",
    "x \u0085y and \u0085\u0085 z\u0085",
    "zero\u200bwidth\u200cjoiner\u200dchars",
    "mongolian\u180evowel separator",
    "en\u2002em\u2003thin\u2009spaces",
    "control \x01\x02\x7f chars",
    "    indented\n        deeper\n    back",
]

DIGITS = [
    "1234567890123456789",
    "3.14159265358979 and 2.718",
    "$1,000,000.00 or 1e-10 or 0x1F",
    "2026-11-24T06:12:00Z",
    "phone 555-0100, room 42b, 7th floor",
    "٣٤٥ Arabic-Indic and १२३ Devanagari digits",
    "½ ¼ ¾ and Ⅻ roman and ① circled and ² superscript",
    "007 0042 000000",
]

ACCENTS = [
    "café résumé naïve",
    "cafe\u0301 re\u0301sume\u0301 nai\u0308ve",
    "Ångström Crème brûlée Straße",
    "A\u030angstro\u0308m Cre\u0300me bru\u0302le\u0301e",
    "İstanbul ı ß ẞ ǅ ﬁ",
    "Ελληνικά γράμματα και Привет мир",
    "Zoë's coöperation, Noël's piñata",
]

CJK_EMOJI = [
    "日本語のテキストです。",
    "中文字符测试，你好世界！",
    "한국어 텍스트 입니다",
    "mixed 日本 text 中文 and 한국",
    "👋🌍 hello",
    "family: 👨\u200d👩\u200d👧\u200d👦 and flag 🏳\ufe0f\u200d🌈",
    "thumbs 👍🏽👍🏿 skin tones",
    "🤖🤖🤖 robots",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "สวัสดีชาวโลก",
    "∑ x² ≤ ∞ → ∂f/∂x ≈ 0",
]

CODE = [
    "def f(x):\n    return x ** 2\n",
    "int main(void) { return 0; }",
    "if (a != b && c >= d) { x += 1; } else { y -= 2; }",
    "<div class=\"note\">Hi &amp; bye</div>",
    "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
    "for i in range(10):\n\tprint(i)\n",
    "#include <cstdio>\n// comment\n/* block */",
    "SELECT * FROM users WHERE id = 42;",
    "x=>x*2; y ??= z || w;",
    "path/to/file.txt and C:\\Windows\\System32",
]

CONTRACTIONS = [
    "don't can't won't shouldn't",
    "I'LL WE'VE THEY'RE SHE'S HE'D I'M",
    "I'll we've they're she's he'd I'm",
    "it'ſ a long s",
    "O'Neil's dog's toy",
    "'s 't 're 've 'm 'll 'd",
    "''quoted'' and `backticks`",
    "rock 'n' roll",
]

MISC = [
    "supercalifragilisticexpialidocious",
    "a" * 70,
    "ab" * 33 + "!",
    "!!!???...,,,;;;",
    "email@example.com https://example.org/path?q=1&r=2#frag",
    "CamelCaseIdentifier snake_case_identifier kebab-case-id",
    "ALL CAPS SENTENCE WITH NUMBERS 123",
    "\u2581already has the sentencepiece marker",
    "ends with newline\n",
]

LINES = PROSE + SPECIAL + WHITESPACE + DIGITS + ACCENTS + CJK_EMOJI + CODE + CONTRACTIONS + MISC


# ---- the byte-fallback tokenizer ------------------------------------------------------------
def train_bytefallback():
    """Train a small BPE on the corpus, then lay it out like Llama-2's tokenizer.json."""
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=True))
    # Metaspace while training so merges stay inside words ("▁the"), as sentencepiece does.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=420, limit_alphabet=70, show_progress=False)
    tok.train_from_iterator(LINES * 3, trainer)
    trained = json.loads(tok.to_str())
    vocab_t = trained["model"]["vocab"]
    # Llama-2 layout: <unk> <s> </s>, then the 256 byte tokens, then the learned pieces.
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = len(vocab)
    for piece, _ in sorted(vocab_t.items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    merges = trained["model"]["merges"]
    n = len(vocab)
    added = [
        {"id": 0, "content": "<unk>", "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True},
        {"id": 1, "content": "<s>", "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True},
        {"id": 2, "content": "</s>", "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True},
        # Not in the model vocab: new ids after it (like tokens added for fine-tuning).
        {"id": n, "content": "<mask>", "single_word": False, "lstrip": True, "rstrip": True,
         "normalized": False, "special": True},
        {"id": n + 1, "content": "frugal", "single_word": True, "lstrip": False, "rstrip": False,
         "normalized": True, "special": False},
        {"id": n + 2, "content": "<|eot_id|>", "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False, "special": True},
    ]
    j = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }
    return j


def main():
    bf = train_bytefallback()
    bf_text = json.dumps(bf, ensure_ascii=False, indent=1)
    with open(os.path.join(OUT, "bytefallback.json"), "w", encoding="utf-8") as f:
        f.write(bf_text)

    bases = {
        "gpt2": json.load(open(os.path.join(SHARED, "gpt2", "tokenizer.json"), encoding="utf-8")),
        "llama3": json.load(open(os.path.join(SHARED, "llama3", "tokenizer.json"), encoding="utf-8")),
        "bytefallback": bf,
    }
    llama3_post = {
        "type": "Sequence",
        "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                      {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                      {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000],
                                                      "tokens": ["<|begin_of_text|>"]}}}]}
    smollm2_pre = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    metaspace = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first",
                 "split": False}
    variants = [
        {"name": "gpt2", "base": "gpt2", "patch": {}},
        {"name": "llama3", "base": "llama3", "patch": {}},
        {"name": "llama3_bos", "base": "llama3", "patch": {"post_processor": llama3_post}},
        {"name": "gpt2_digits", "base": "gpt2", "patch": {"pre_tokenizer": smollm2_pre}},
        {"name": "bytefallback", "base": "bytefallback", "patch": {}},
        {"name": "bytefallback_metaspace", "base": "bytefallback",
         "patch": {"normalizer": None, "pre_tokenizer": metaspace}},
    ]
    out = {"generator": "scripts/gen_tokenizer_fixtures.py",
           "tokenizers_version": __import__("tokenizers").__version__,
           "lines": LINES, "variants": []}
    for v in variants:
        j = copy.deepcopy(bases[v["base"]])
        j.update(v["patch"])
        tok = Tokenizer.from_str(json.dumps(j))
        plain = [tok.encode(s, add_special_tokens=False).ids for s in LINES]
        special = [tok.encode(s, add_special_tokens=True).ids for s in LINES]
        decoded = [tok.decode(ids, skip_special_tokens=False) for ids in plain]
        # Random id sequences (any token, special or not, byte tokens in any order: invalid
        # UTF-8 on purpose) with tokenizers' decode, with and without skip_special_tokens.
        rng = random.Random(len(v["name"]))
        n_vocab = tok.get_vocab_size(with_added_tokens=True)
        specials = [t["id"] for t in j["added_tokens"]]
        decode_cases = []
        for k in range(40):
            ids = [rng.randrange(n_vocab) if rng.random() < 0.8 else rng.choice(specials)
                   for _ in range(rng.randint(1, 12))]
            skip = k % 2 == 1
            decode_cases.append({"ids": ids, "skip_special": skip,
                                 "text": tok.decode(ids, skip_special_tokens=skip)})
        rec = dict(v)
        rec.update({"ids": plain, "ids_special": special, "decoded": decoded,
                    "decode_cases": decode_cases})
        out["variants"].append(rec)
        print(v["name"], "tokens", sum(map(len, plain)))
    with open(os.path.join(OUT, "golden.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
    print("lines", len(LINES))


if __name__ == "__main__":
    main()
