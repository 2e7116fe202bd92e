"""Write a tiny random-weight llama GGUF that a real llama-server loads in under a second.

The demo config and the tests serve it: real server, real HTTP surface, gibberish output.
Made with ggml's own writer (the ``gguf`` package, the ``demo`` extra).
"""

from __future__ import annotations

from pathlib import Path

from llamaswap_docker.errors import LlamaswapError

__all__ = ["write_tiny_gguf", "ensure_tiny_gguf", "TINY_GGUF_NAME"]

TINY_GGUF_NAME = "tiny.gguf"

# Small enough to load in ~0.5 s on one core, large enough for llama.cpp's shape checks.
_N_EMBD = 64
_N_HEAD = 4
_N_FF = 128
_N_BLOCKS = 2
_N_CTX = 512
_PIECES = ("▁the", "▁a", "▁and", "▁of", "▁to", "▁is", "▁in", "▁it", "▁you", "▁that",
           "ing", "ed", "er", "s", "▁hello", "▁world", "▁model", "▁swap")
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def write_tiny_gguf(path: Path, *, seed: int = 0) -> Path:
    """Write the tiny model to ``path`` and return it.

    Raises:
        LlamaswapError: the ``gguf`` package is not installed.
    """
    try:
        import gguf
        import numpy as np
    except ImportError as exc:
        raise LlamaswapError(
            "the demo model needs the 'gguf' package: pip install 'llamaswap-docker[demo]'"
        ) from exc

    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + list(_PIECES)
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * len(_PIECES)
    scores = [0.0] * 259 + [-float(i) for i in range(len(_PIECES))]
    n_vocab = len(tokens)

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("llamaswap-tiny")
    writer.add_context_length(_N_CTX)
    writer.add_embedding_length(_N_EMBD)
    writer.add_block_count(_N_BLOCKS)
    writer.add_feed_forward_length(_N_FF)
    writer.add_head_count(_N_HEAD)
    writer.add_head_count_kv(_N_HEAD)
    writer.add_rope_dimension_count(_N_EMBD // _N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_chat_template(_CHAT_TEMPLATE)

    rng = np.random.default_rng(seed)

    def weights(*shape: int) -> "np.ndarray":
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    # numpy shapes are GGUF's dimensions reversed: (rows, columns) = (ne1, ne0).
    writer.add_tensor("token_embd.weight", weights(n_vocab, _N_EMBD))
    for block in range(_N_BLOCKS):
        prefix = f"blk.{block}"
        writer.add_tensor(f"{prefix}.attn_norm.weight", np.ones(_N_EMBD, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"{prefix}.{name}.weight", weights(_N_EMBD, _N_EMBD))
        writer.add_tensor(f"{prefix}.ffn_norm.weight", np.ones(_N_EMBD, dtype=np.float32))
        writer.add_tensor(f"{prefix}.ffn_gate.weight", weights(_N_FF, _N_EMBD))
        writer.add_tensor(f"{prefix}.ffn_up.weight", weights(_N_FF, _N_EMBD))
        writer.add_tensor(f"{prefix}.ffn_down.weight", weights(_N_EMBD, _N_FF))
    writer.add_tensor("output_norm.weight", np.ones(_N_EMBD, dtype=np.float32))
    # Output rows: zero for the control and byte tokens, large for the text pieces, so the model
    # writes whole UTF-8 pieces — llama-server holds back partial UTF-8 bytes, which would turn
    # a stream into one final chunk.
    output = np.zeros((n_vocab, _N_EMBD), dtype=np.float32)
    output[259:] = weights(len(_PIECES), _N_EMBD) * 50
    writer.add_tensor("output.weight", output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def ensure_tiny_gguf(directory: Path) -> Path:
    """Return ``directory/tiny.gguf``, writing it first if it is missing."""
    path = directory / TINY_GGUF_NAME
    if not path.exists():
        write_tiny_gguf(path)
    return path
