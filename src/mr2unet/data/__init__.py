"""Data: download/extract MVTec AD, generate synthetic MVTec-format data, prepare splits."""
