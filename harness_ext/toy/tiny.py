"""Tiny Llama-architecture models built from a config, for offline CPU runs and tests.

The tokenizer is a byte-level BPE (so any text, MUSE's real files included, is encodable)
trained on the embedded corpus only and committed as ``assets/tokenizer.json``;
:func:`train_tokenizer` regenerates it and a test checks that the committed file matches. It
prepends ``<s>`` (BOS) when ``add_special_tokens=True``, like Llama-2's tokenizer.

Dimensions are multiples of 128 (hidden 256, intermediate 768) because the quantizer kernels
(bitsandbytes blocks, GPTQ/AWQ groups) need them.
"""

from __future__ import annotations

from pathlib import Path

ASSET_DIR = Path(__file__).parent / "assets"
TOKENIZER_ASSET = ASSET_DIR / "tokenizer.json"
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
VOCAB_SIZE = 4096

TINY_DEFAULTS = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=256,
    intermediate_size=768,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,  # as Llama-2
    bos_token_id=BOS_ID,
    eos_token_id=EOS_ID,
    pad_token_id=PAD_ID,
)


def _tokenizer_training_texts() -> list[str]:
    from ..data import embedded

    texts: list[str] = []
    for flavour in embedded.FLAVOURS:
        files = embedded.generate(flavour=flavour)
        for rel, obj in sorted(files.items()):
            if rel.startswith("raw/"):
                texts += obj
            elif rel.startswith("knowmem/"):
                texts += [f"Question: {d['question']}\nAnswer: {d['answer']}\n\n" for d in obj]
    return texts


def train_tokenizer():
    """Train the byte-level BPE on the embedded corpus (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tokenizer_training_texts(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)]
    )
    return tok


def load_tokenizer():
    """The committed tiny tokenizer as a ``transformers`` fast tokenizer."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_file(str(TOKENIZER_ASSET)),
        bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        # transformers 5 ignores clean-up for BPE tokenizers anyway; saying so avoids a warning.
        clean_up_tokenization_spaces=False,
    )


def tiny_config(**overrides):
    from transformers import LlamaConfig

    for key in ("hidden_size", "intermediate_size"):
        value = overrides.get(key, TINY_DEFAULTS[key])
        if value % 128:
            raise ValueError(f"{key}={value} must be a multiple of 128 (quantizer kernels need it)")
    return LlamaConfig(**{**TINY_DEFAULTS, **overrides})


def build_tiny_llama(out_dir: str | Path | None = None, seed: int = 0, **overrides):
    """Randomly initialise a tiny Llama (seeded). Saves model + tokenizer when ``out_dir`` is set.

    Returns ``(model, tokenizer)``.
    """
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(**overrides))
    model.generation_config.pad_token_id = PAD_ID
    tokenizer = load_tokenizer()
    if out_dir is not None:
        save_model(model, tokenizer, out_dir)
    return model, tokenizer


def save_model(model, tokenizer, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)  # safetensors
    tokenizer.save_pretrained(out)
    return out
