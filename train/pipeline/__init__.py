"""The wiring: command line, stage runner, catalog and run-directory helpers.

This is the only code that imports every package; no package imports it.
"""
