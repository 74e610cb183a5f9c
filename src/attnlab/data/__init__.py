"""Parallel text for seq2seq: TSV loading, built-in generated corpora, tokenisation, vocab."""
