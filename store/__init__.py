"""PostgreSQL access: the pool, migrations, and one module per table group."""
