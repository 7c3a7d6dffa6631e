"""``muse-quant`` subcommands, one module each (see ``harness_ext/cli.py``)."""
