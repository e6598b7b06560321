"""Cross-cutting concerns, one interceptor per file."""
