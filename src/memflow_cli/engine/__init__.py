"""The engine: the streaming generator, its KV cache and memory bank, the flow-matching schedule, the compiled
block, the decoders and the decode stage. It runs loaded modules; it reads no files and knows no timelines."""
