"""Everything that speaks to MLflow, and the DVC experiment read-out.

- :mod:`~mr2unet.tracking.connection`: the leaf the others import: which store, a client,
  locked and retried writes, MLflow's process-wide URI, ``first_line``;
- :mod:`~mr2unet.tracking.runs`: one MLflow run per trained model;
- :mod:`~mr2unet.tracking.outbox`, :mod:`~mr2unet.tracking.sync`,
  :mod:`~mr2unet.tracking.probe`: tracking that never blocks training on a server;
- :mod:`~mr2unet.tracking.registry`: test metrics on runs, registry aliases, model URIs;
- :mod:`~mr2unet.tracking.pyfunc`: the MLflow pyfunc flavour of a trained network;
- :mod:`~mr2unet.tracking.experiments`: mean +/- std over a seed sweep of DVC experiments.

The rest of the library imports none of this; the stage scripts in ``pipeline/`` compose it
with the library when ``tracking.enabled`` is true.  MLflow is imported lazily (except by
``pyfunc``, which only runs with it), so importing the package does not need it.
"""
