"""The CDS Hooks 2.0 protocol: wire types, prefetch gathering and example requests; knows no service."""
