"""Storage: the SQLite writer, schema migrations, history reads, retention and the command log."""
