"""The offline convert step: GPT-2 checkpoints (OpenAI's TensorFlow release, the book's `.pth`, Hugging
Face folders) → one `weights/gpt2-<name>.safetensors` file that `gpt2.load_model` reads with torch alone,
or → the Hub's GPT-2 layout (`to_hf`), optionally published to the Hub (`publish`).

TensorFlow is imported lazily, only by the TF route, so `python -m convert --help` is fast and the
PyTorch routes work without it.
"""
