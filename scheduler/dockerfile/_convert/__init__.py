"""Typed commands -> BuildGraph: one module per instruction family (see ``_dispatch``)."""
