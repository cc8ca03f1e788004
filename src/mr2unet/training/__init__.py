"""Training: the loop (:mod:`.loop`), its losses, collapse detection and augmentation.

Reads prepared splits (:mod:`mr2unet.data`), builds networks (:mod:`mr2unet.models`) and
writes model files through :mod:`mr2unet.models.checkpoint`; knows nothing of evaluation,
reporting, tracking or deployment.
"""
