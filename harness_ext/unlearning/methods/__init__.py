"""Forget losses, one file per method; each registers with ``@METHODS.register``. Every module
here is imported on first use (:func:`harness_ext.unlearning.available_methods`); the ``_gdr`` /
``_klr`` (:mod:`..regularizers`) and ``_sure`` (:mod:`..sure`) variants are generated from them."""
