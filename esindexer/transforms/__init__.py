"""Object transforms shipped with esindexer (examples to use as they are or to copy)."""
