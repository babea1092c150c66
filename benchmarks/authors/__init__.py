"""The LoRITa authors' released checkpoints: their layout read into the suite's models, and the runs made from them."""
