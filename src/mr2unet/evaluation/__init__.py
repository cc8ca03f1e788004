"""Evaluation: scoring a trained network on the test split (:mod:`.evaluate`), paired
statistics over per-image scores (:mod:`.stats`) and a network's cost (:mod:`.cost`).

The pure metric functions it applies live one level down, in :mod:`mr2unet.metrics`.
"""
