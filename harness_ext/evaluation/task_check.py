"""Refuse, before anything is generated, a task the model cannot score.

The ``muse_*_privleak`` tasks need per-token log-probs (Min-K% Prob). ``muse_quant`` returns them
(its ``token_logprobs`` method); lm-eval's built-in models (``hf``, ``vllm``, ...) return only
sums. Without this check lm-eval would run every other task first (hours at 7B) and fail in
``process_results`` at the very end.

Two places call it:

* ``muse-quant eval`` while reading its arguments (:func:`check_command_line`), before any model
  is loaded: the fix says to use ``--model muse_quant`` or to leave the privleak task out.
* the privleak dataset builder in ``tasks/utils.py`` (:func:`check_running_model`), which plain
  ``lm_eval`` calls after loading the model and before any request is run: the fix says to run
  ``muse-quant eval`` (plain lm-eval 0.4.13 cannot load ``muse_quant``) or to leave it out.

A task needs per-token log-probs when its ``process_results`` is ``utils.process_privleak``
(:data:`TOKEN_LOGPROB_HOOK`); groups are expanded through the task index of the MUSE task folder.
"""

from __future__ import annotations

from ..errors import MuseQuantError

#: the ``process_results`` hook of the tasks that need per-token log-probs
TOKEN_LOGPROB_HOOK = "process_privleak"
#: the method a model provides when it returns per-token log-probs (``harness_ext.lm``)
TOKEN_LOGPROB_METHOD = "token_logprobs"


def _index() -> dict:
    from lm_eval.tasks import TaskManager

    from ..plugin import tasks_dir

    return TaskManager(include_path=tasks_dir(), include_defaults=False).task_index


def leaf_tasks(name: str, index: dict) -> list[str]:
    """The tasks a name stands for (a group's, recursively); ``[name]`` for a task or a name
    outside the MUSE folder."""
    entry = index.get(name)
    cfg = (entry.cfg or {}) if entry is not None else {}
    if entry is None or "group" not in cfg:
        return [name]
    out = []
    for child in cfg.get("task") or []:
        child = child.get("task") if isinstance(child, dict) else child
        if isinstance(child, str):
            out += [t for t in leaf_tasks(child, index) if t not in out]
    return out


def needs_token_logprobs(task: str, index: dict) -> bool:
    entry = index.get(task)
    hook = str(((entry.cfg or {}) if entry is not None else {}).get("process_results") or "")
    return hook.rsplit(".", 1)[-1] == TOKEN_LOGPROB_HOOK


def provides_token_logprobs(model) -> bool:
    """True for a model (class or instance) that returns per-token log-probs."""
    inner = getattr(model, "lm", None)  # lm-eval's CachingLM wraps the model
    return hasattr(model, TOKEN_LOGPROB_METHOD) or (
        inner is not None and hasattr(inner, TOKEN_LOGPROB_METHOD))


def _problem(model_name: str, tasks: list[str], index: dict):
    """``(privleak tasks, the requested tasks without them)``; ``None`` when nothing is wrong."""
    needing, kept = [], []
    for name in tasks:
        leaves = leaf_tasks(name, index)
        bad = [t for t in leaves if needs_token_logprobs(t, index)]
        needing += [t for t in bad if t not in needing]
        kept += [t for t in ([name] if not bad else leaves) if t not in bad and t not in kept]
    return (needing, kept) if needing else None


def _error(model_name: str, needing: list[str], kept: list[str], use_muse_quant: str):
    names = ", ".join(needing)
    leave_out = f"leave {names} out: --tasks {','.join(kept)}" if kept else \
        f"leave {names} out"
    return MuseQuantError(
        f"{names} need{'s' if len(needing) == 1 else ''} per-token log-probs, which --model "
        f"{model_name} does not return (only sums); stopped before generating anything",
        f"{use_muse_quant}, or {leave_out}")


def check_command_line(model_name: str, tasks: list[str]) -> None:
    """``muse-quant eval``: refuse a privleak task for a model class without per-token log-probs.

    lm-eval's built-in models (``lm_eval.models.MODEL_MAPPING``, loaded lazily) return only
    sums, so they are refused without importing them (no torch: the error comes in seconds);
    other names (``muse_quant``, plugins) are looked up in the registry. Unknown names are left to
    lm-eval (it lists the known ones).
    """
    from lm_eval.models import MODEL_MAPPING

    if model_name not in MODEL_MAPPING:
        from lm_eval.api.registry import get_model

        from ..plugin import register

        register()
        try:
            if provides_token_logprobs(get_model(model_name)):
                return
        except (ValueError, KeyError):
            return
    problem = _problem(model_name, tasks, _index())
    if problem:
        raise _error(model_name, *problem,
                     "use --model muse_quant (the default of muse-quant eval; it takes the "
                     "same --model_args as hf)")


def check_running_model(task: str) -> None:
    """Called while lm-eval builds ``task``'s dataset: refuse it when the model that lm-eval
    is about to evaluate cannot return per-token log-probs (plain ``lm_eval --model hf``)."""
    from ..quantizers.compat import model_being_evaluated

    found = model_being_evaluated()
    if found is None:  # not inside simple_evaluate (e.g. a test building the task): nothing to do
        return
    model, model_name, requested = found
    if provides_token_logprobs(model):
        return
    problem = _problem(model_name, requested or [task], _index())
    needing, kept = problem if problem else ([task], [])
    raise _error(model_name, needing, kept,
                 "run the same command as `muse-quant eval --model muse_quant ...` (plain "
                 "lm_eval 0.4.13 cannot load muse_quant; muse-quant eval takes the same "
                 "arguments)")
