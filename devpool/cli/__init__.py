"""The ``devpool`` command line: ``bench`` (the main job), ``capture``, ``replay``, ``info``,
``check-kernels``. A client of the library, as a user's program is: ``main`` parses,
``bench`` and ``replay`` run their jobs, ``io`` holds what they share (progress, pages
and trace files in, outputs written atomically, one clean line per failure).
"""

from .main import main

__all__ = ["main"]
