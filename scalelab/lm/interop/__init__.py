"""Other formats: Hugging Face Llama export and import (`hf.py`, the one name table) and GGUF for llama.cpp."""
