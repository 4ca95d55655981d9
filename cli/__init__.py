"""The ``packtool`` command line: click commands that parse, call the library, and render.

The entry point is :func:`packtool.cli.main.main` (console script ``packtool`` and
``python -m packtool``). Nothing here holds PackNet logic: every command is a thin wrapper
around the public API of :mod:`packtool` and :mod:`packtool.exporters`.
"""
