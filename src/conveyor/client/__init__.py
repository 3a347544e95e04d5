"""The Python SDK: AsyncClient, and the sync Client made from it."""
