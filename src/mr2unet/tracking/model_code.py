"""MLflow *models from code* entry point of the mr2unet pyfunc.

``mlflow.pyfunc.log_model(python_model=<this file>)`` stores this file in the logged model
instead of a pickled object; ``mlflow.pyfunc.load_model`` executes it, which builds the
model from source (:class:`mr2unet.tracking.pyfunc.SegmentationModel`, from the installed
package or the copy logged under ``code/``). The weights come from the checkpoint artifact,
read with ``torch.load(weights_only=True)``. Importing this module has one effect: it
registers that object with ``mlflow.models.set_model``.
"""

import mlflow

from mr2unet.tracking.pyfunc import SegmentationModel

mlflow.models.set_model(SegmentationModel())
