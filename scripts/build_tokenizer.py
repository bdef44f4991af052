#!/usr/bin/env python3
"""Build the Llama-2 tokenizer file (data/tokenizer/llama2.tok) from llama-tokenizer-js.

llama-tokenizer-js@1.2.2 (MIT) embeds Meta's Llama-1/2 vocabulary (32000 pieces in id order, base64 of
'\\n'-joined UTF-8) and its 61,249 BPE merges (base64 of little-endian uint16 token-id pairs, in merge
order) as two string constants in llama-tokenizer.js. This script reads the JS file as text (no node
needed; only the Python standard library), and writes:

  * OUT.tok  -- our own binary tokenizer file, read by src/tokenizer.c (format in docs/data.md);
  * optionally (--spm MODEL) a SentencePiece tokenizer.model with the same pieces and scores, used only
    as the test oracle (needs Debian's python3-sentencepiece + python3-protobuf: run with /usr/bin/python3).

Scores: ids 0..258 (<unk>, <s>, </s>, <0x00>..<0xFF>) get 0; every other piece gets -(rank of the first
merge that produces it). This is not -id: 53 merges are out of id order and '▁▁' (id 259) is the very
last merge, so the scores must come from the merges. Pieces no merge produces (single characters, and a
few others) get -(1e6 + id): they are never the result of a merge, so their score only orders them
after every real merge, exactly as in the reference recipe.

usage: build_tokenizer.py LLAMA_TOKENIZER_JS OUT.tok [--spm OUT.model]
"""
import base64
import re
import struct
import sys

MAGIC = b"MGTK"
VERSION = 1
# SentencePiece piece types (sentencepiece_model.proto).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
FLAG_ADD_DUMMY_PREFIX, FLAG_BYTE_FALLBACK, FLAG_ESCAPE_WHITESPACES = 1, 2, 4


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def load_js(path):
    js = open(path, encoding="utf-8").read()
    mv = re.search(r'const llama_vocab_base64 = "([^"]*)"', js)
    mm = re.search(r'const llama_merges_binary = "([^"]*)"', js)
    if not mv or not mm:
        sys.exit(f"build_tokenizer: error: {path} has no llama_vocab_base64/llama_merges_binary constants "
                 "(expected llama-tokenizer-js 1.2.2)")
    vocab = base64.b64decode(mv.group(1)).decode("utf-8").split("\n")
    mb = base64.b64decode(mm.group(1))
    if len(vocab) != 32000 or len(mb) % 4:
        sys.exit(f"build_tokenizer: error: unexpected sizes in {path}: {len(vocab)} pieces, {len(mb)} merge bytes")
    ids = struct.unpack("<%dH" % (len(mb) // 2), mb)
    merges = [(vocab[ids[i]], vocab[ids[i + 1]]) for i in range(0, len(ids), 2)]
    return vocab, merges


def piece_types_scores(vocab, merges):
    first = {}
    for rank, (a, b) in enumerate(merges):
        first.setdefault(a + b, rank)
    types, scores = [], []
    for i, p in enumerate(vocab):
        types.append(UNKNOWN if i == 0 else CONTROL if i < 3 else BYTE if i < 259 else NORMAL)
        scores.append(0.0 if i < 259 else -float(first.get(p, 10**6 + i)))
    return types, scores


def write_tok(path, vocab, types, scores):
    enc = [p.encode("utf-8") for p in vocab]
    body = bytearray()
    flags = FLAG_ADD_DUMMY_PREFIX | FLAG_BYTE_FALLBACK | FLAG_ESCAPE_WHITESPACES
    body += MAGIC
    # version, vocab_size, flags, unk, bos, eos, pad, max_piece_bytes, reserved
    body += struct.pack("<IIIiiiiII", VERSION, len(vocab), flags, 0, 1, 2, -1, max(len(e) for e in enc), 0)
    for e, t, s in zip(enc, types, scores):
        if len(e) > 255:
            sys.exit("build_tokenizer: error: piece longer than 255 bytes")
        body += struct.pack("<fBB", s, t, len(e)) + e
    body += struct.pack("<Q", fnv1a64(bytes(body)))
    with open(path, "wb") as f:
        f.write(body)


def write_spm(path, vocab, types, scores):
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb
    except ImportError as e:
        sys.exit(f"build_tokenizer: error: cannot build the SentencePiece oracle model: {e}. Install Debian's "
                 "python3-sentencepiece python3-protobuf (scripts/setup.sh does) and run with /usr/bin/python3")
    m = pb.ModelProto()
    T = pb.ModelProto.SentencePiece
    tmap = {NORMAL: T.NORMAL, UNKNOWN: T.UNKNOWN, CONTROL: T.CONTROL, BYTE: T.BYTE}
    for p, t, s in zip(vocab, types, scores):
        sp = m.pieces.add()
        sp.piece = p
        sp.type = tmap[t]
        sp.score = s
    t = m.trainer_spec
    t.model_type = pb.TrainerSpec.BPE
    t.vocab_size = len(vocab)
    t.byte_fallback = True
    t.split_digits = True
    t.unk_id, t.bos_id, t.eos_id, t.pad_id = 0, 1, 2, -1
    t.allow_whitespace_only_pieces = True
    t.max_sentencepiece_length = 16
    n = m.normalizer_spec
    n.name = "identity"
    n.add_dummy_prefix = True
    n.remove_extra_whitespaces = False
    n.escape_whitespaces = True
    with open(path, "wb") as f:
        f.write(m.SerializeToString())


def main(argv):
    args = [a for a in argv[1:]]
    spm = None
    if "--spm" in args:
        i = args.index("--spm")
        if i + 1 >= len(args):
            sys.exit("build_tokenizer: error: --spm needs an output path")
        spm = args[i + 1]
        del args[i:i + 2]
    if len(args) != 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    vocab, merges = load_js(args[0])
    types, scores = piece_types_scores(vocab, merges)
    write_tok(args[1], vocab, types, scores)
    print(f"build_tokenizer: wrote {args[1]} ({len(vocab)} pieces, {len(merges)} merges)")
    if spm:
        write_spm(spm, vocab, types, scores)
        print(f"build_tokenizer: wrote {spm} (SentencePiece oracle for tests)")


if __name__ == "__main__":
    main(sys.argv)
