"""`python -m imageiq`: the `imageiq` command where its console script is not installed (the
bento image, whose migration Job runs `python -m imageiq db upgrade`)."""

from imageiq.cli import run

run()
