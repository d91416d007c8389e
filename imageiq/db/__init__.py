"""Metadata in a SQL database: the schema, its migrations, and the engine."""
