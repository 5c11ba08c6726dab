"""Only the optional C extension; everything else is in pyproject.toml.

``esindexer.convert._scan_c`` is the C version of the pickle pre-scan
(esindexer/convert/scan.py). ``optional=True``: when it cannot be compiled (no compiler
or no Python headers), setuptools warns and installs without it, and the pure-Python
scan is used instead.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "esindexer.convert._scan_c",
            sources=["esindexer/convert/_scan_c.c"],
            optional=True,
        ),
        # the unpickler's source and global lookup (esindexer/convert/reader.py); optional too
        Extension(
            "esindexer.convert._reader_c",
            sources=["esindexer/convert/_reader_c.c"],
            optional=True,
        ),
    ]
)
