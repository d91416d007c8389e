"""The ``imageiq`` command. It sits above training and the core (CLI -> training -> core):
nothing in :mod:`imageiq` or :mod:`training` imports it."""
