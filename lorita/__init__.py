"""LoRITa: Low-Rank Induced Training (Zhang, Alkhouri, Wang; TMLR 2024) as a library for any PyTorch model."""
