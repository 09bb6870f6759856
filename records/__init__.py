"""Typed records: Arrow schemas, row validation, atomic files, the run directory. Depends on pyarrow and pydantic only."""
