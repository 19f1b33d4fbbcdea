"""Generation: the decoder and its KV cache, batches of rows, sampling, streamed text, the continuous-batching engine
and the CPU kernels. It never loads a model: callers hand it one (see `scalelab.lm.checkpoint.load_model`)."""
