"""longctx: measure how well sequence models really use long contexts (RULER-exact tasks, any tokenizer)."""

__version__ = "0.1.0"
