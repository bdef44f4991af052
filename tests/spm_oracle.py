#!/usr/bin/python3
"""Test oracle for tests/test_tokenizer.c: encode texts with SentencePiece (python3-sentencepiece) and the
Llama-2-equivalent tokenizer.model built by scripts/build_tokenizer.py --spm.

usage: /usr/bin/python3 spm_oracle.py MODEL IN OUT
IN:  records of (uint32 little-endian byte length, bytes), one per text (bytes may be any UTF-8 or not;
     SentencePiece replaces malformed bytes with U+FFFD itself).
OUT: records of (uint32 count, count x int32 ids) without BOS, in the same order.
With IN = "-" and OUT = "-" it instead reads text from stdin and prints the ids of the whole text."""
import struct
import sys

import sentencepiece as spm


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    sp = spm.SentencePieceProcessor(model_file=sys.argv[1])
    if sys.argv[2] == "-":
        print(" ".join(map(str, sp.encode(sys.stdin.buffer.read()))))
        return
    data = open(sys.argv[2], "rb").read()
    texts, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack_from("<I", data, pos)
        texts.append(data[pos + 4:pos + 4 + n])
        pos += 4 + n
    out = bytearray()
    for ids in sp.encode(texts):
        out += struct.pack("<I%di" % len(ids), len(ids), *ids)
    open(sys.argv[3], "wb").write(out)


if __name__ == "__main__":
    main()
