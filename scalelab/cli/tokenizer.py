"""`scalelab tokenizer`: build the corpus, train a byte-level BPE tokenizer (or reuse one), write the token shards.

    scalelab tokenizer --run runs/demo --corpus stdlib --vocab-size 4096
    scalelab tokenizer --run runs/mix --corpus stdlib --corpus ../shared/data/tiny_shakespeare/input.txt:2 \\
        --corpus ../shared/data/mbpp/mbpp.jsonl#code:0.5 --vocab-size 8192
    scalelab tokenizer --run runs/sft --tokenizer runs/demo --corpus notes/ --val-corpus held_out.jsonl#text
    scalelab tokenizer --config configs/stdlib_tokenizer.yaml
"""

from __future__ import annotations

import argparse

from scalelab.common import print0
from scalelab.config import parse_config
from scalelab.lm.data.shards import TokenizerConfig, prepare


def _extra(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("corpus")
    group.add_argument("--corpus", dest="corpus", action="extend", nargs="+", default=None, metavar="SPEC",
                       help="source PATH[#FIELD][:WEIGHT], repeatable: 'stdlib' (default), a text file, folder or "
                            "glob, data.jsonl#text, data.parquet#text, a save_to_disk folder, hf:NAME; WEIGHT = times "
                            "its training documents are repeated (fractions allowed)")
    group.add_argument("--val-corpus", dest="val_corpus", action="extend", nargs="+", default=None, metavar="SPEC",
                       help="validate on these sources instead of holding out --val-fraction of the corpus")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(TokenizerConfig, argv, prog="scalelab tokenizer", extra=_extra)
    s = prepare(cfg)
    bpt = s["bytes_per_token_val"]
    print0(f"tokenizer: {s['tokenizer']} (vocabulary {s['vocab_size']})")
    for split in ("train", "val"):
        print0(f"{split:>5}: {s['documents'][split]:>9,} documents  {s['tokens'][split]:>12,} tokens  "
               f"{s['bytes'][split]:>13,} bytes")
    print0(f"bytes/token on val: {bpt:.3f}" if bpt is not None else "bytes/token on val: n/a (empty val split)")
    sec = s["seconds"]
    print0(f"time: {sec['total']:.1f} s (tokenizer {sec['tokenizer']:.1f} s, encoding {sec['encode']:.1f} s)")
    return 0
