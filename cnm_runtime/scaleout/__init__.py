"""Scale-out: the local run's grounding on Ray Data actors, across a cluster (``pip install 'cnm[ray]'``).

``shards`` cuts a queries file into shards, ``shard_files`` keeps the output folder (a file pair per shard,
resumable), ``dataset`` grounds a dataset of shards on actors (the Python API: ``dataset.ground_dataset``),
``job`` is ``cnm-run --engine ray``. ray is imported only where it is used, so these modules import without it.
"""
