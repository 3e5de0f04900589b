"""Client-side local storage: chunking, chunk files on disk and the SQLite index."""
