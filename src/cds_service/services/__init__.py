"""The CDS services: their declarations (registry), and how a hook call is answered (answer, diagnosis, treatment).

Above serving, cards, safety and hooks; below the API and the runtime, so the same answer path serves
any entry point and never imports a concrete scoring backend.
"""
