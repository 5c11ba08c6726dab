"""The optional C extension, and the guides shipped inside the package; the rest is in pyproject.toml.

``esindexer.convert._scan_c`` is the C version of the pickle pre-scan
(esindexer/convert/scan.py). ``optional=True``: when it cannot be compiled (no compiler
or no Python headers), setuptools warns and installs without it, and the pure-Python
scan is used instead.

The guides (docs/*.md) are copied into the built package as ``esindexer/docs`` so that
``esindexer docs`` and the links in ``--help`` work where esindexer is installed from a
wheel; an editable install reads the checkout's docs/ directly.
"""

import pathlib
import shutil

from setuptools import Extension, setup
from setuptools.command.build_py import build_py


class BuildWithGuides(build_py):
    def run(self) -> None:
        super().run()
        source = pathlib.Path(__file__).parent / "docs"
        if source.is_dir():  # absent only in a tree that removed them on purpose
            target = pathlib.Path(self.build_lib) / "esindexer" / "docs"
            target.mkdir(parents=True, exist_ok=True)
            for guide in source.glob("*.md"):
                shutil.copy2(guide, target / guide.name)


setup(
    cmdclass={"build_py": BuildWithGuides},
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
        # the follower's binary COPY rows (esindexer/source/copyrows.py); optional too
        Extension(
            "esindexer.source._copy_c",
            sources=["esindexer/source/_copy_c.c"],
            optional=True,
        ),
        # a record's references with their keys, for the object graph (esindexer/objects/edges.py); optional too
        Extension(
            "esindexer.objects._edges_c",
            sources=["esindexer/objects/_edges_c.c"],
            optional=True,
        ),
        # the typed model's shaping of decoded states (esindexer/documents/fastshape.py); optional too
        Extension(
            "esindexer.documents._shape_c",
            sources=["esindexer/documents/_shape_c.c"],
            optional=True,
        ),
    ],
)
