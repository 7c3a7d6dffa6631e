"""MUSE data: loaders for hub / local / embedded sources, and the embedded corpus generator."""

from . import embedded
from .sources import CORPORA, load_file, load_texts, resolve_source, source_label, validate

__all__ = ["CORPORA", "embedded", "load_file", "load_texts", "resolve_source", "source_label",
           "validate"]
