"""The ``devpool`` command line: ``bench`` (the main job), ``capture``, ``replay``, ``info``,
``check-kernels``. A client of the library, as a user's program is: ``main`` parses,
``bench`` and ``replay`` run their jobs, ``io`` holds what they share (progress, pages
and trace files in, outputs written atomically, one clean line per failure), ``capture``
reads real pages (of workloads it spawns, or of a process by pid) and ``measure`` the
paired-pass ratios against a bare ``lz4.block`` loop that every figure is reported as.

Knows: the library's public verbs. Never knows: storage, allocator, handles' insides.
"""

from .main import main

__all__ = ["main"]
