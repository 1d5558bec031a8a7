"""Checkpoints as safetensors, one file per format: the folder on disk (files.py), our layout (native.py), Hugging
Face / DeepSeek's DeepseekV3 (hf.py), Llama for dense students (llama.py), DeepSeek's FP8 release (fp8.py), our
int8 / int4 and bf16 (quantized.py), the loader that reads them all (load.py), and llama.cpp's GGUF, written
only (gguf.py)."""
from nanoseek.checkpoint.files import CONFIG
from nanoseek.checkpoint.load import load_checkpoint
from nanoseek.checkpoint.native import save_checkpoint
from nanoseek.checkpoint.quantized import save_quantized

__all__ = ["CONFIG", "load_checkpoint", "save_checkpoint", "save_quantized"]
