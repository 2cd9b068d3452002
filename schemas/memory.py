"""Settings of Arrow's memory allocator and numpy's BLAS, made before either loads (they read them once).

Arrow's default allocator, mimalloc, gives freed pages back to the OS after a short delay. A
stage that streams batches frees and allocates the same few hundred MiB over and over, so those
pages come back as fresh ones that the kernel faults in and zeroes again (zeroing pages was 7-10%
of a GBIF ingest's CPU samples). ``MIMALLOC_PURGE_DELAY=-1`` keeps freed pages for reuse instead:
half the page faults, 4-8% less wall time at 2M occurrences. Peak memory stays what it was; it
is just not handed back before the process ends.

mimalloc also asks the kernel for transparent huge pages for its arenas. Each first touch of
such a page zeroes 2 MiB at once, and on one of the project's hosts (virtual, THP on
``madvise``) that cost 7% to 20% of an ingest's CPU samples, varying from run to run (on another
host it made no measurable difference). ``MIMALLOC_ALLOW_THP=0`` keeps to 4 KiB pages: the same
bytes are zeroed, in more faults, and there a GBIF ingest of 1M occurrences took 2.8 s instead
of 3.3 s on average over six alternating pairs (2M: 4.9 s instead of 5.7 s, four pairs), and
curate at 5M rows 12.4-14.2 s instead of 16.2-19.3 s (five pairs).
mimalloc applies it with ``prctl(PR_SET_THP_DISABLE)`` once Arrow first allocates, and child
processes inherit that: a program that biocorpus starts afterwards runs without huge pages too
(bench-curate turns them back on for arbor-process).

numpy's OpenBLAS starts threads at import that no stage needs (no stage multiplies large
matrices); they showed in ~1.8% of an ingest's CPU samples. ``OPENBLAS_NUM_THREADS=1`` keeps it
to the calling thread (the one BLAS use, curate's perceptual hash, multiplies 32x32 matrices,
which OpenBLAS does not split across threads anyway).

A value already in the environment wins, so ``MIMALLOC_PURGE_DELAY=10`` and
``MIMALLOC_ALLOW_THP=1`` (mimalloc's defaults) restore the old ways.

Importing any biocorpus package runs this first; a process that imported pyarrow (or numpy)
before it keeps their defaults (nothing breaks, it is only slower).
"""

from __future__ import annotations

import os

ENV_DEFAULTS = {"MIMALLOC_PURGE_DELAY": "-1", "MIMALLOC_ALLOW_THP": "0", "OPENBLAS_NUM_THREADS": "1"}


def configure() -> None:
    """Put the allocator and BLAS settings into the environment unless the user set them."""
    for name, value in ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)


configure()
