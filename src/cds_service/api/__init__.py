"""The HTTP layer (an entry point): the FastAPI app, its dependencies, error table and routes; no domain logic."""
