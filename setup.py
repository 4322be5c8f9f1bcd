"""The optional C extension of dbsentry (everything else is in pyproject.toml).

``dbsentry.engines.postgres.masking._fastmask`` runs the per-row loops of result masking in C; when it cannot
be built (no compiler, no Python headers) the install goes on without it and the same
loops run in Python (see docs/performance.md, "Bulk export with masking").
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "dbsentry.engines.postgres.masking._fastmask",
            ["src/dbsentry/engines/postgres/masking/_fastmask.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
