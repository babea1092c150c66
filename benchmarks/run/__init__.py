"""One run's stages: train (resumable, interruptible), compress, fine-tune, measure, and where it runs."""
