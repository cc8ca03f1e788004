"""Getting a trained network onto a production line: ``mr2unet predict`` and export."""
