"""Training: the data set (``data``), the training run (``train``), metrics with intervals (``metrics``), bundle
building (``pipeline``) and the figures (``figures``). Used by the ``gshap`` command, never by the server."""
