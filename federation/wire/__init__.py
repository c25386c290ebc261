"""What crosses between the aggregator and the sites, and nothing else.

``federation.server`` and ``federation.client`` never import each other; they share this package
(and ``federation.errors``): the message contract (``protocol``), the study spec that travels in
the run config (``spec``, with its ``[cohort]`` section in ``cohort``), the descriptive analysis
request (``queries``), the evaluation release's layout (``evaluation``), the finished model's
files (``model_files``), and how quickly both sides retry Flower's object transfers
(``transfer``). Its modules import only each other, ``federation.errors``, ``privacy``
and ``models``; ``tests/test_layering.py`` holds every package to its rules.
"""
