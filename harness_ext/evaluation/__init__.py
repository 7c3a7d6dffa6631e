"""Evaluating models at many precisions: :mod:`.sweep` (one load, one results file per scheme)
and :mod:`.diagnostics` (what quantization does to an unlearning update, in the weights)."""
