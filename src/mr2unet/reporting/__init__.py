"""Reporting: the report stage's Markdown/HTML (Table 1 beside the paper's, significance,
pictures, curves). Reads evaluation outputs; knows no MLflow.
"""
