"""The DuckDB warehouse: templated SQL rendered into views, the derived feature cache, checks and the leak audit."""
