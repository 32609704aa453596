#!/usr/bin/env python3
"""Regenerates every fixture of tests/data/tokenizer (the reference for tests/unit/tokenizer.cpp).

How to run (from the repository root; needs g++, libonig-dev, zlib1g-dev and nlohmann-json3-dev for the
C++ side, and the HF `tokenizers` package, e.g. in a throwaway virtual environment):

    python3 -m venv /tmp/tok-venv && /tmp/tok-venv/bin/pip install tokenizers
    /tmp/tok-venv/bin/python tests/data/tokenizer/generate.py

To replace the stored DeepSeek-V3 tokenizer (origin: README.md), add `--deepseek-json PATH`.

What it does, in order:
  1. writes the corpora: corpus.jsonl (the texts every encoding fixture covers) and train_corpus.jsonl,
     plus train_config.json (vocabulary sizes and special tokens of the training runs);
  2. trains two byte-level BPE tokenizers with HF on train_corpus.jsonl: GPT-2 pre-tokenizer and
     DeepSeek-V3 pre-tokenizer (hf_trained_*.tokenizer.json);
  3. builds gpt2_style.tokenizer.json: the GPT-2-style one plus added tokens that use every flag
     (single_word, lstrip, rstrip, normalized, special) and a TemplateProcessing post-processor;
  4. writes expected_<name>.json: HF's ids for every corpus line (with and without special tokens),
     HF's decode of them (with and without skip_special_tokens) and of slices that cut characters;
  5. writes variants.json: pre-tokenizer and model variants (Split behaviours, Digits, add_prefix_space,
     unk_token, ignore_merges...) of the trained tokenizers with HF's ids for the first lines;
  6. compiles and runs save_with_dsx.cpp, which re-saves the fixture tokenizers and trains two
     tokenizers with dsx; checks that HF loads every file dsx saved and encodes the corpus exactly as
     from the originals (the script fails otherwise), reports whether dsx's training reproduced HF's
     merges, and writes expected_cpp_trained_*.json: HF's ids for the files dsx trained and saved.
"""
import argparse
import gzip
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

import tokenizers
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
DEEPSEEK = os.path.join(HERE, "deepseek_v3.tokenizer.json.gz")
# sha256 of the uncompressed DeepSeek-V3 tokenizer.json this folder stores (origin: README.md).
DEEPSEEK_SHA256 = "621ac2e32d0dba658404412318818aaa8ce8cda492e59830109d8da6b517fb41"

VARIANT_LINES = 120  # corpus lines covered by each variant
SPECIAL_LINES = 80  # corpus lines encoded with add_special_tokens=True for DeepSeek-V3

TRAIN_CONFIG = {
    "gpt2": {"vocab_size": 1000, "special_tokens": ["<|endoftext|>", "<|bos|>", "<|pad|>"]},
    "deepseek_v3": {"vocab_size": 1200, "special_tokens": ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"]},
}

# ---------------------------------------------------------------------------------------------------
# Corpora. Written for this repository; every category the tokenizers must agree on appears: English,
# code, numbers, CJK, emoji, other scripts, white-space runs, control characters and special tokens.

ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "A tokenizer turns text into integers, and a decoder turns them back.",
    "We measured the throughput twice: once cold, once warm.",
    "She said, \"I'll be there at noon,\" but didn't say which day.",
    "THEY'RE LOUD; we're not. You've seen it, haven't you? I'd think so.",
    "Mixture-of-experts layers route each token to a few of many feed-forward networks.",
    "Latent attention compresses keys and values into a small shared vector.",
    "It's 5 o'clock somewhere -- or so the saying goes...",
    "Read the manual (section 4.2, page 17) before you start!",
    "e.g. i.e. etc. vs. Mr. Mrs. Dr. St. -- abbreviations everywhere",
    "Rock'n'roll isn't dead; it's sleeping.",
    "Hyphenated-words, under_scored_words and camelCaseWords all differ.",
    "naïve café résumé coöperate façade jalapeño Zürich",
]

CODE = [
    "def add(a, b):\n    return a + b\n",
    "for (int i = 0; i < n; ++i) { sum += x[i] * w[i]; }",
    "#include <vector>\nint main() { std::vector<int> v{1, 2, 3}; return v.size(); }",
    "if x != None and len(xs) >= 2:\n\tprint(f\"{x!r} -> {xs[-1]}\")",
    "{\"name\": \"dsx\", \"version\": [0, 1, 0], \"ok\": true, \"ratio\": 0.75}",
    "SELECT id, name FROM users WHERE age > 30 ORDER BY name DESC;",
    "$ grep -rn \"TODO\" src/ | wc -l && echo done",
    "const f = (x) => x ** 2; // square\n/* block */",
    "<div class=\"row\"><span id='a1'>text</span></div>",
    "matrix[i][j] += alpha * a[i][k] * b[k][j];;",
    "    indented    with    spaces\n\t\ttabs\t\tand\ttabs",
    "x=1;y=2;z=x<<3|y>>1^0xFF&~0b1010",
]

NUMBERS = [
    "0", "7", "42", "123", "1234", "12345", "1234567", "3.14159", "2.71828e-5", "6.02e23",
    "1,234,567.89", "0xDEADBEEF", "2024-06-01", "12:34:56", "+1 (555) 010-9999", "50%",
    "-273.15", "1/3", "v2.3.10", "10^9", "007", "99999999999999999999", "0.000001",
]

CJK = [
    "你好，世界！今天天气很好。",
    "深度学习模型需要大量的训练数据。",
    "東京は日本の首都です。ひらがなとカタカナ：さくら、サクラ。",
    "コンピューターのメモリが足りません",
    "안녕하세요, 세계! 한국어 문장입니다.",
    "中文English混合text测试123",
    "「引用」と『二重引用』、そして（括弧）。",
    "𠀀𠀁 CJK Extension B 字",
    "全角ＡＢＣ１２３　全角スペース",
]

EMOJI = [
    "😀😃😄", "👍🏽 thumbs up", "👨‍👩‍👧‍👦 family", "🇯🇵🇫🇷 flags", "❤️ heart with selector",
    "🤖 robot says hi", "✅ done ❌ failed", "🎉🎉🎉!!!", "🧪 test tube",
]

SCRIPTS = [
    "Привет, мир! Это тест.",
    "Γειά σου κόσμε — αλφάβητο",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया, यह परीक्षण है।",
    "สวัสดีชาวโลก",
    "e\u0301 versus \u00e9 (combining versus precomposed)",
    "\u0301 a mark with nothing before it",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 ∑ √ ≤ ≥ ∞ € ¥ £ ©",
    "“curly” ‘quotes’ «guillemets» …ellipsis",
]

SPACES = [
    " ", "  ", "   leading", "trailing   ", "\t", "\n", "\n\n\n", "\r\n", "a\r\nb", " \n ",
    "\u3000", "\u00a0non-breaking", "em\u2003space", "zero\u200bwidth", "\ufeffbom", "x \t y", "a\n\n  b",
]

CONTROL = ["\u0001\u0001", "bell\u0007", "del\u007f", "nul\u0000in the middle", "\u0001x\u0001"]

SPECIALS = [
    "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<|EOT|>",
    "<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>", "<｜tool▁sep｜>", "<｜tool▁call▁end｜>",
    "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", "<｜▁pad▁｜>", "<|endoftext|>", "<|bos|>", "<|pad|>",
    "<mask>", "[NOTE]", "<tab>", "<sep>", "<｜begin▁of", "<|endof",
]

FIXED_LINES = [
    "",
    "a",
    "<｜begin▁of▁sentence｜><｜User｜>Hello!<｜Assistant｜>Hi there.<｜end▁of▁sentence｜>",
    "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
    "<｜fim▁begin｜>def f(x):\n    <｜fim▁hole｜>\n    return y<｜fim▁end｜>",
    "<|bos|>text<|endoftext|><|pad|><|pad|>",
    # added-token flags of gpt2_style: single_word <mask>, lstrip+rstrip [NOTE], rstrip <tab>, lstrip <sep>
    "a <mask> b<mask>c <mask>, (<mask>) x<mask> <mask>",
    "before   [NOTE]   after\t[NOTE]\n[NOTE]x",
    "<tab>   spaced <tab>\t\tend<tab>",
    "x   <sep>y <sep> <sep>",
    "plain text|> and <|endoftext|> and <sep><sep><sep> and <sep> <sep><sep>",
    "<|endoftext|><|endoftext|>",
    "a" * 300,
    "ab" * 100 + " " + "xy" * 90,
    "1234567890" * 5,
    " " * 40 + "x" + "\n" * 12,
    "\t" * 5 + "tab run",
    "don't DON'T Don't 'quoted' ''",
    "http://example.com/path?q=1&r=two#frag user@example.org",
    "🙂" * 12,
    "中文" * 20,
]


def make_corpus(seed, count, control):
    """`count` lines of 1-4 fragments; `control`: whether control characters may appear (the training
    corpus has none, so the variants that drop their byte tokens from the vocabulary break no merge)."""
    rng = random.Random(seed)
    categories = [ENGLISH, CODE, NUMBERS, CJK, EMOJI, SCRIPTS, SPACES, SPECIALS] + ([CONTROL] if control else [])
    weights = [5, 4, 3, 3, 2, 2, 2, 2] + ([1] if control else [])
    separators = [" ", " ", " ", "", "\n", "  ", "\t", ", ", "\r\n", "\n\n"]
    lines = []
    for _ in range(count):
        parts = [rng.choice(rng.choices(categories, weights)[0]) for _ in range(rng.randint(1, 4))]
        text = parts[0]
        for p in parts[1:]:
            text += rng.choice(separators) + p
        lines.append(text)
    return lines


def write_jsonl(path, lines):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(json.dumps({"text": line}, ensure_ascii=False) + "\n")


def write_json(path, value):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(value, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


def save_tokenizer(tok, path):
    # Tokenizer.save writes pretty JSON; keep the files small and stable.
    data = json.loads(tok.to_str())
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(data, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


# ---------------------------------------------------------------------------------------------------
# Tokenizers

def deepseek_pre_tokenizer_json():
    """The pre_tokenizer object of the stored DeepSeek-V3 tokenizer.json."""
    with gzip.open(DEEPSEEK, "rt", encoding="utf-8") as f:
        return json.load(f)["pre_tokenizer"]


def train_hf(kind, lines):
    tok = Tokenizer(models.BPE())
    if kind == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        data = json.loads(tok.to_str())
        data["pre_tokenizer"] = deepseek_pre_tokenizer_json()
        tok = Tokenizer.from_str(json.dumps(data))
    tok.decoder = decoders.ByteLevel()
    cfg = TRAIN_CONFIG[kind]
    trainer = trainers.BpeTrainer(
        vocab_size=cfg["vocab_size"],
        min_frequency=0,
        special_tokens=cfg["special_tokens"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer)
    return tok


def gpt2_style_from(trained):
    tok = Tokenizer.from_str(trained.to_str())
    tok.add_tokens([
        AddedToken("<mask>", single_word=True, normalized=False),
        AddedToken("[NOTE]", lstrip=True, rstrip=True, normalized=True),
        AddedToken("<tab>", rstrip=True, normalized=False),
        AddedToken("<sep>", lstrip=True, normalized=True, special=True),
        # Overlaps the non-normalized special <|endoftext|>: which pass runs first decides the ids.
        AddedToken("text|>", normalized=True),
        # Starts with another added token: leftmost-longest decides.
        AddedToken("<sep><sep>", normalized=True),
    ])
    tok.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A <|endoftext|>",
        pair="<|bos|> $A <|endoftext|> $B:1 <|endoftext|>:1",
        special_tokens=[("<|bos|>", tok.token_to_id("<|bos|>")), ("<|endoftext|>", tok.token_to_id("<|endoftext|>"))],
    )
    return tok


def expected_for(tok, lines, tokenizer_file, special_lines):
    enc = [tok.encode(t, add_special_tokens=False).ids for t in lines]
    slices = []
    for i in range(0, len(lines), 5):
        ids = enc[i]
        if len(ids) < 2:
            continue
        for begin, end in ((0, len(ids) // 2), (1, len(ids)), (len(ids) // 3, len(ids) - 1)):
            slices.append({"line": i, "begin": begin, "end": end, "text": tok.decode(ids[begin:end], skip_special_tokens=False)})
    return {
        "tokenizers_version": tokenizers.__version__,
        "tokenizer": tokenizer_file,
        "corpus": "corpus.jsonl",
        "encode": enc,
        "encode_special": [tok.encode(t, add_special_tokens=True).ids for t in lines[:special_lines]],
        "decode": [tok.decode(ids, skip_special_tokens=False) for ids in enc],
        "decode_skip_special": [tok.decode(ids, skip_special_tokens=True) for ids in enc],
        "decode_slices": slices,
    }


def variants(gpt2_style_json, trained_json, lines):
    ds = deepseek_pre_tokenizer_json()
    byte_level = lambda prefix, regex: {"type": "ByteLevel", "add_prefix_space": prefix, "trim_offsets": True, "use_regex": regex}
    split = lambda pattern, behavior, invert=False: {"type": "Split", "pattern": pattern, "behavior": behavior, "invert": invert}
    seq = lambda *steps: {"type": "Sequence", "pretokenizers": list(steps)}
    punct = {"Regex": r"\p{P}"}  # one character per match: runs of punctuation are consecutive matches
    punct_runs = {"Regex": r"\p{P}+"}
    specs = [
        ("byte_level_prefix_space", "gpt2_style", {"pre_tokenizer": byte_level(True, True)}),
        ("byte_level_no_regex", "gpt2_style", {"pre_tokenizer": byte_level(False, False)}),
        ("byte_level_no_regex_prefix_space", "gpt2_style", {"pre_tokenizer": byte_level(True, False)}),
        ("digits_individual", "gpt2_style", {"pre_tokenizer": seq({"type": "Digits", "individual_digits": True}, byte_level(False, True))}),
        ("digits_runs", "gpt2_style", {"pre_tokenizer": seq({"type": "Digits", "individual_digits": False}, byte_level(False, False))}),
        ("split_string_removed", "gpt2_style", {"pre_tokenizer": seq(split({"String": " "}, "Removed"), byte_level(False, False))}),
        ("split_merged_with_previous", "gpt2_style", {"pre_tokenizer": seq(split(punct, "MergedWithPrevious"), byte_level(False, False))}),
        ("split_merged_with_next", "gpt2_style", {"pre_tokenizer": seq(split(punct, "MergedWithNext"), byte_level(False, False))}),
        ("split_runs_merged_with_previous", "gpt2_style", {"pre_tokenizer": seq(split(punct_runs, "MergedWithPrevious"), byte_level(False, True))}),
        ("split_contiguous", "gpt2_style", {"pre_tokenizer": seq(split({"Regex": r"\s"}, "Contiguous"), byte_level(False, False))}),
        ("split_removed_inverted", "gpt2_style", {"pre_tokenizer": seq(split({"Regex": r"\p{L}+"}, "Removed", True), byte_level(False, False))}),
        ("split_merged_with_next_inverted", "gpt2_style", {"pre_tokenizer": seq(split(punct, "MergedWithNext", True), byte_level(False, True))}),
        ("split_lookbehind_and_empty_matches", "gpt2_style", {"pre_tokenizer": seq(split({"Regex": r"(?<=[a-z])(?=[A-Z])|x*"}, "Isolated"), byte_level(False, False))}),
        ("deepseek_pre_tokenizer", "gpt2_style", {"pre_tokenizer": ds}),
        ("ignore_merges", "gpt2_style", {"model": {"ignore_merges": True}}),
        ("unk", "hf_trained_gpt2", {"model": {"unk_token": "<|pad|>", "fuse_unk": False, "remove_vocab": ["ā", "ć", "ġ"]}}),
        ("unk_fused", "hf_trained_gpt2", {"model": {"unk_token": "<|pad|>", "fuse_unk": True, "remove_vocab": ["ā", "ć", "ġ"]}}),
        ("no_unk_drops_bytes", "hf_trained_gpt2", {"model": {"remove_vocab": ["ā", "ć", "ġ"]}}),
        ("roberta_post_processor", "gpt2_style", {"post_processor": {"type": "RobertaProcessing", "sep": ["<|endoftext|>", 0], "cls": ["<|bos|>", 1], "trim_offsets": True, "add_prefix_space": False}}),
        ("sequence_post_processor", "gpt2_style", {"post_processor": {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True},
            gpt2_style_json["post_processor"]]}}),
        ("no_decoder", "gpt2_style", {"decoder": None}),
    ]
    out = []
    bases = {"gpt2_style": gpt2_style_json, "hf_trained_gpt2": trained_json}
    for name, base, patch in specs:
        data = json.loads(json.dumps(bases[base]))
        apply_patch(data, patch)
        tok = Tokenizer.from_str(json.dumps(data))
        out.append({
            "name": name,
            "base": base + (".tokenizer.json"),
            "patch": patch,
            "encode": [tok.encode(t, add_special_tokens=False).ids for t in lines[:VARIANT_LINES]],
            "encode_special": [tok.encode(t, add_special_tokens=True).ids for t in lines[:10]],
            "decode": [tok.decode(tok.encode(t, add_special_tokens=False).ids, skip_special_tokens=False) for t in lines[:10]],
        })
    return out


def apply_patch(data, patch):
    """The same edits tests/unit/tokenizer.cpp applies: replace pre_tokenizer/post_processor/decoder, set
    model options, and drop vocabulary entries (only entries no merge uses)."""
    for key in ("pre_tokenizer", "post_processor", "decoder"):
        if key in patch:
            data[key] = patch[key]
    model = patch.get("model", {})
    for key in ("unk_token", "fuse_unk", "ignore_merges"):
        if key in model:
            data["model"][key] = model[key]
    for token in model.get("remove_vocab", []):
        for merge in data["model"]["merges"]:
            pair = merge if isinstance(merge, list) else merge.split(" ")
            assert token not in pair and token != "".join(pair), f"{token!r} is used by a merge"
        del data["model"]["vocab"][token]


# ---------------------------------------------------------------------------------------------------

def import_deepseek(path):
    with open(path, "rb") as f:
        raw = f.read()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != DEEPSEEK_SHA256:
        sys.exit(f"{path}: sha256 {digest} differs from the recorded {DEEPSEEK_SHA256}")
    with open(DEEPSEEK, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
        gz.write(raw)


def run_dsx_side(out_dir):
    """Compiles save_with_dsx.cpp and runs it: it writes the re-saved and the dsx-trained files."""
    exe = os.path.join(out_dir, "save_with_dsx")
    cxx = os.environ.get("CXX", "g++")
    cmd = [cxx, "-std=c++20", "-O2", "-I", os.path.join(ROOT, "include"), os.path.join(HERE, "save_with_dsx.cpp"),
           "-o", exe, "-lonig", "-lz"]
    subprocess.run(cmd, check=True)
    subprocess.run([exe, HERE, out_dir], check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deepseek-json", help="import this DeepSeek-V3 tokenizer.json (checked against the recorded sha256)")
    args = parser.parse_args()
    if args.deepseek_json:
        import_deepseek(args.deepseek_json)
    with gzip.open(DEEPSEEK, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != DEEPSEEK_SHA256:
        sys.exit(f"{DEEPSEEK}: content sha256 {digest} differs from the recorded {DEEPSEEK_SHA256}")

    # 1. corpora
    corpus = FIXED_LINES + make_corpus(seed=20240601, count=300, control=True)
    train = FIXED_LINES + make_corpus(seed=7, count=700, control=False)
    write_jsonl(os.path.join(HERE, "corpus.jsonl"), corpus)
    write_jsonl(os.path.join(HERE, "train_corpus.jsonl"), train)
    write_json(os.path.join(HERE, "train_config.json"), TRAIN_CONFIG)

    # 2-3. tokenizers
    trained = {}
    for kind in TRAIN_CONFIG:
        trained[kind] = train_hf(kind, train)
        save_tokenizer(trained[kind], os.path.join(HERE, f"hf_trained_{kind}.tokenizer.json"))
    gpt2_style = gpt2_style_from(trained["gpt2"])
    save_tokenizer(gpt2_style, os.path.join(HERE, "gpt2_style.tokenizer.json"))
    with gzip.open(DEEPSEEK, "rt", encoding="utf-8") as f:
        deepseek = Tokenizer.from_str(f.read())

    # 4. expected encodings
    write_json(os.path.join(HERE, "expected_gpt2_style.json"),
               expected_for(gpt2_style, corpus, "gpt2_style.tokenizer.json", len(corpus)))
    write_json(os.path.join(HERE, "expected_deepseek_v3.json"),
               expected_for(deepseek, corpus, "deepseek_v3.tokenizer.json.gz", SPECIAL_LINES))

    # 5. variants
    write_json(os.path.join(HERE, "variants.json"), {
        "tokenizers_version": tokenizers.__version__,
        "corpus": "corpus.jsonl",
        "variants": variants(json.loads(gpt2_style.to_str()), json.loads(trained["gpt2"].to_str()), corpus),
    })

    # 6. files written by dsx
    out_dir = tempfile.mkdtemp(prefix="dsx-tokenizer-")
    try:
        run_dsx_side(out_dir)
        for name, original in (("gpt2_style", gpt2_style), ("deepseek_v3", deepseek)):
            resaved = Tokenizer.from_file(os.path.join(out_dir, f"resaved_{name}.tokenizer.json"))
            for text in corpus:
                for special in (False, True):
                    a = original.encode(text, add_special_tokens=special).ids
                    b = resaved.encode(text, add_special_tokens=special).ids
                    if a != b:
                        sys.exit(f"the tokenizer dsx re-saved from {name} encodes {text!r} as {b}, HF's original as {a}")
            print(f"{name}: the file dsx saved encodes the corpus exactly as the original in HF")
        for kind in TRAIN_CONFIG:
            path = os.path.join(out_dir, f"cpp_trained_{kind}.tokenizer.json")
            cpp = Tokenizer.from_file(path)
            hf_model = json.loads(trained[kind].to_str())["model"]
            cpp_model = json.loads(cpp.to_str())["model"]
            same = hf_model["vocab"] == cpp_model["vocab"] and hf_model["merges"] == cpp_model["merges"]
            print(f"{kind}: dsx's training {'reproduces' if same else 'DIFFERS FROM'} HF's vocabulary and merges "
                  f"({len(cpp_model['merges'])} merges)")
            write_json(os.path.join(HERE, f"expected_cpp_trained_{kind}.json"),
                       expected_for(cpp, corpus, f"(trained by dsx: {kind})", 0))
    finally:
        shutil.rmtree(out_dir)


if __name__ == "__main__":
    main()
