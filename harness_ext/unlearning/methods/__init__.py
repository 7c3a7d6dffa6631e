"""Forget losses, one file per method family; each registers with ``@METHODS.register``.
Every module here is imported on first use (:func:`harness_ext.unlearning.available_methods`)."""
