"""The model process with the forward pass skipped: with ``frontend_service.py``, the
benchmark's measure of what the front processes deliver to the model process (the shared
memory hand-over and its batching queue included). A benchmark mode, never a serving mode:
only ``load-tests/bench.py`` runs it (``python load-tests/frontend_model_process.py
--socket PATH``, the fronts pointed at it with ``IMAGEIQ_MODEL_SOCKET``)."""

from __future__ import annotations

import frontend_service  # noqa: F401  (skips the forward pass, names the threads)

from imageiq.model_process import main

if __name__ == "__main__":
    main()
