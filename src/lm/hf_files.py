"""File names of a Hugging Face tokenizer directory, shared by the tokenizer loader (does a
directory hold a tokenizer?) and the checkpoint converter (which files to copy or fetch).
A module of its own so that neither pulls in the other's imports (lm.data, jax)."""

TOKENIZER_DEFINING_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "special_tokens_map.json",
)
"""Files of which an HF tokenizer directory holds at least one."""

TOKENIZER_FILES = (*TOKENIZER_DEFINING_FILES, "added_tokens.json", "chat_template.jinja")
"""Every file of an HF tokenizer directory: what an export copies and a hub fetch takes."""
