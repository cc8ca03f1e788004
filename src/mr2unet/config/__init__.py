"""Configuration: ``params.yaml`` (:mod:`.params`), its profiles (:mod:`.profiles`), the
project's root and locks (:mod:`.workspace`) and provenance (:mod:`.provenance`).

The lowest package after :mod:`mr2unet.errors`: every other package may read it.
"""
