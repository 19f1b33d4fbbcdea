"""Generation: the decoder and its KV cache, batches of rows, sampling, streamed text, the continuous-batching engine
and the CPU kernels. The engine and its parts are handed a model; only `loading.py` loads one (through
`scalelab.lm.checkpoint.load_model`, the one loader), with its tokenizer and inference dtype."""
