"""Metadata storage: a dialect-neutral store over a small database adapter (SQLite now, PostgreSQL later)."""
