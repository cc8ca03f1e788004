"""Reporting: the report stage's Markdown/HTML (Table 1 beside the paper's, the verdicts,
significance, pictures, curves), split by job: ``inputs`` (reading), ``tables``,
``verdicts``, ``figures``, ``report`` (the document once, rendered by ``markup``). Reads
evaluation outputs; knows no MLflow.
"""
