"""ShoeSeg's application: the ``shoeseg`` command line and the ``shoeseg up`` stack launcher.

The one package that wires every part together; it may import the backend, the worker, the core
(``shoeseg``) and ``via_tools``, and nothing imports it.
"""
