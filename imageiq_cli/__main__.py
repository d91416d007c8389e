"""`python -m imageiq_cli`: the `imageiq` command where its console script is not installed
(the bento image, whose migration Job runs `python -m imageiq_cli db upgrade`)."""

from imageiq_cli.main import run

run()
