"""The demo's models: a pre-trained base, the target (fine-tuned on forget + retain) and the
retrain model (fine-tuned on retain only). See :mod:`harness_ext.demo.config` for the recipe."""

from __future__ import annotations

import json
from pathlib import Path

from .. import metrics
from ..toy import tiny, training
from .config import ModelRecipe

SPLITS = {"target": ("forget", "retain"), "retrain": ("retain",)}
CORPUS_FILE = "muse_quant_corpus.json"  # which embedded corpus the base was pre-trained for


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


def finetune(name: str, recipe: ModelRecipe, out_dir: str | Path, progress: bool = True,
             threads: int | None = None) -> Path:
    """Fine-tune ``out_dir/base`` into ``out_dir/<name>`` (``target``: forget + retain,
    ``retrain``: retain only)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..data import embedded

    if threads:
        torch.set_num_threads(threads)
    out = Path(out_dir)
    files = embedded.generate(flavour=json.loads((out / "base" / CORPUS_FILE).read_text()))
    tokenizer = tiny.load_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(out / "base", dtype=torch.float32)
    training.train_tokenized(model, finetune_data(tokenizer, files, SPLITS[name], recipe),
                             epochs=recipe.finetune_epochs, lr=recipe.finetune_lr,
                             batch_size=recipe.finetune_batch_size, seed=recipe.seed,
                             desc=f"fine-tune {name}", progress=progress,
                             bucket_by_length=True)
    return tiny.save_model(model, tokenizer, out / name)


def build_models(corpus: str, recipe: ModelRecipe, out_dir: str | Path, progress: bool = True,
                 jobs: int = 1, names: tuple[str, ...] = tuple(SPLITS)) -> dict[str, Path]:
    """Train base, then ``names`` (default: target and retrain; ``jobs`` at a time); save each
    as an HF folder."""
    from ..data import embedded

    out = Path(out_dir)
    files = embedded.generate(flavour=corpus)
    model, tokenizer = tiny.build_tiny_llama(
        seed=recipe.seed, hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size, num_hidden_layers=recipe.num_hidden_layers,
        num_attention_heads=recipe.num_attention_heads)
    training.train_tokenized(model, pretrain_data(tokenizer, files, recipe),
                             epochs=recipe.pretrain_epochs, lr=recipe.pretrain_lr,
                             batch_size=recipe.pretrain_batch_size, seed=recipe.seed,
                             warmup_steps=recipe.pretrain_warmup_steps,
                             desc="pre-train base", progress=progress,
                             bucket_by_length=True)
    paths = {"base": tiny.save_model(model, tokenizer, out / "base")}
    (out / "base" / CORPUS_FILE).write_text(json.dumps(corpus))
    if jobs > 1 and len(names) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {name: pool.submit(finetune, name, recipe, out, False, 1)
                       for name in names}
            paths.update({name: f.result() for name, f in futures.items()})
    else:
        for name in names:
            paths[name] = finetune(name, recipe, out, progress)
    return paths
