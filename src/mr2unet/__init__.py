"""mr2unet: a reproducible reproduction of MR2U-Net anomaly segmentation on MVTec AD."""

__version__ = "0.1.0"
