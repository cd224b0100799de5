"""Commands to nodes and task placement."""
