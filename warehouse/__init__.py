"""MERGE writers (DuckDB, Snowflake) behind one small interface: see ``warehouse.base``."""
