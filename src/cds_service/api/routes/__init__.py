"""One module per resource of the API, each with its own `router`, included by `api.main`."""
