"""Quantization quality: KL divergence against a reference model (kld), activation statistics
and llama.cpp's importance-matrix GGUF files (imatrix), GPTQ error feedback (gptq)."""
