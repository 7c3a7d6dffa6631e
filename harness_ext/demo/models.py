"""The demo's models: a pre-trained base, the target (fine-tuned on forget + retain) and the
retrain model (fine-tuned on retain only). See :mod:`harness_ext.demo.config` for the recipe."""

from __future__ import annotations

import copy
from pathlib import Path

from .. import metrics, tiny, training
from .config import ModelRecipe


def icl_prefix(icl: list[dict]) -> str:
    """The in-context pairs of a KnowMem file, written as MUSE's prompt writes them."""
    return metrics.knowmem_prompt(icl, "")[:-len("Question: \nAnswer: ")]


def pretrain_data(tokenizer, files: dict, recipe: ModelRecipe) -> training.TokenizedTexts:
    """Generic documents + generic question/answer chains (the QA format, no corpus facts)."""
    generic = files["raw/generic.json"][:recipe.generic_docs]
    n_docs = len(generic) if recipe.generic_docs is None else recipe.generic_docs
    qa = files["knowmem/generic_qa.json"]
    qa = qa[:len(qa) * n_docs // max(1, len(files["raw/generic.json"]))]
    ids = training.TokenizedTexts.from_texts(tokenizer, generic, recipe.max_len).ids
    ids += training.qa_chains(tokenizer, qa, recipe.pretrain_qa_per_chain, seed=recipe.seed)
    return training.TokenizedTexts(ids, tiny.PAD_ID)


def finetune_data(tokenizer, files: dict, splits: tuple[str, ...],
                  recipe: ModelRecipe) -> training.TokenizedTexts:
    """The splits' documents + their facts as QA chains behind the file's in-context pairs."""
    raw = {"forget": "raw/forget.json", "retain": "raw/retain1.json"}
    docs = [text for split in splits for text in files[raw[split]]]
    ids = training.TokenizedTexts.from_texts(tokenizer, docs, recipe.max_len).ids
    for split in splits:
        prefix = icl_prefix(files[f"knowmem/{split}_qa_icl.json"])
        for shuffle in range(recipe.finetune_qa_shuffles):
            ids += training.qa_chains(tokenizer, files[f"knowmem/{split}_qa.json"],
                                      recipe.finetune_qa_per_chain, seed=recipe.seed + 1 + shuffle,
                                      prefix=prefix)
    return training.TokenizedTexts(ids, tiny.PAD_ID)


def build_models(files: dict, recipe: ModelRecipe, out_dir: str | Path,
                 progress: bool = True) -> dict[str, Path]:
    """Train base, target and retrain; save each as an HF folder under ``out_dir``."""
    out = Path(out_dir)
    model, tokenizer = tiny.build_tiny_llama(
        seed=recipe.seed, hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size, num_hidden_layers=recipe.num_hidden_layers,
        num_attention_heads=recipe.num_attention_heads)
    training.train_tokenized(model, pretrain_data(tokenizer, files, recipe),
                             epochs=recipe.pretrain_epochs, lr=recipe.pretrain_lr,
                             batch_size=recipe.pretrain_batch_size, seed=recipe.seed,
                             warmup_steps=recipe.pretrain_warmup_steps,
                             desc="pre-train base", progress=progress)
    paths = {"base": tiny.save_model(model, tokenizer, out / "base")}
    for name, splits in (("target", ("forget", "retain")), ("retrain", ("retain",))):
        tuned = copy.deepcopy(model)
        training.train_tokenized(tuned, finetune_data(tokenizer, files, splits, recipe),
                                 epochs=recipe.finetune_epochs, lr=recipe.finetune_lr,
                                 batch_size=recipe.finetune_batch_size, seed=recipe.seed,
                                 desc=f"fine-tune {name}", progress=progress)
        paths[name] = tiny.save_model(tuned, tokenizer, out / name)
    return paths
