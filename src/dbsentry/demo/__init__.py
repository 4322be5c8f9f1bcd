"""``dbsentry demo``: an embedded PostgreSQL, a generated shop, the proxy and a guided tour.

``embedded.py`` runs PostgreSQL from the ``pgserver`` package's binaries, ``dataset.py``
generates the data, ``workspace.py`` keeps the demo directory (configuration, tokens),
``runner.py`` wires it together (``run_demo``) and ``tour.py`` is the scripted scenario.
Nothing is imported here, so that loading the command line stays fast.
"""
