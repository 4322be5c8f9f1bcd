"""The PostgreSQL wire protocol: codec, messages, authentication, client encodings."""
