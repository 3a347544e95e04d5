"""The PostgreSQL store: several broker nodes on one database (needs asyncpg:
``pip install 'conveyor-queue[postgres]'``)."""
