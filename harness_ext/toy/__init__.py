"""Toy models for offline CPU runs: :mod:`.tiny` (a tiny Llama built from a config, with the
project's byte-level BPE tokenizer in ``assets/``) and :mod:`.training` (plain causal-LM training
used to build the demo's target and retrain models)."""
