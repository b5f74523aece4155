"""The weights: the hub (download, lock, verify), safe checkpoint reading, LoRAs, quantization, the memory plan,
--low-vram, and the registry of models."""
