"""Training: the loop (:mod:`.loop`) over its pieces: what is learned (:mod:`.config`),
how a run executes (:mod:`.options`), model set-up (:mod:`.setup`), resuming
(:mod:`.checkpoint`), batches and the epoch tally (:mod:`.batches`), the outputs
(:mod:`.outputs`); losses, tile crops and collapse detection.

Reads prepared splits (:mod:`mr2unet.data`), builds networks (:mod:`mr2unet.models`) and
writes model files through :mod:`mr2unet.models.checkpoint`; knows nothing of evaluation,
reporting, tracking or deployment.
"""
