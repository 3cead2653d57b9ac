"""cnm-features: videos -> a feature archive, through PyAV (decoding) and a CLIP vision model (transformers).

``decode`` (a file -> the frames at chosen instants), ``preprocess`` (CLIP's resize, crop and normalisation),
``workers`` (decoding processes), ``backbone`` (the model), ``extractor`` (the batching loop), ``sources``
(which files, which ids), ``errors`` and ``cli``. Needs ``pip install 'cnm[video]'``.
"""
