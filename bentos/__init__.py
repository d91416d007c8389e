"""The BentoML service that serves ImageIQ models (``bentos.service:ImageClassifier``)."""
