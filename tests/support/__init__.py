"""Helpers shared by the integration tests and ``make demo``: real services and images,
no pytest (so a plain script can use them).  Tests import them as ``support.<module>``
(pytest puts tests/ on sys.path); examples/demo.py puts tests/ on sys.path itself."""
