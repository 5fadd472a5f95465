"""State behind one interface: an embedded SQLite store (default) and a Redis store."""
