"""Text in, tokens out: corpus sources, the BPE tokenizer, token shards on disk and the batch loader."""
