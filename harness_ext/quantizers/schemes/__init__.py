"""One file per quantization family; each registers its schemes with ``@QUANTIZERS.register``.
Every module here is imported on first use (:func:`harness_ext.quantizers.available_schemes`)."""
