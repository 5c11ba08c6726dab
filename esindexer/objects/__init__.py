"""The object model: which records are application objects, their parts and their place in the tree (docs/documents.md#objects)."""
