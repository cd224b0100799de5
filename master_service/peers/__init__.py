"""Several masters on one PostgreSQL: shared metrics, one leader chosen by an advisory lock."""
