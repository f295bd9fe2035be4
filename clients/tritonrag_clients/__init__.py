"""Clients for the tritonrag server: streaming CLI, benchmark, canary control."""
