"""memflow-cli: render MemFlow long videos offline, from a timeline of prompts to an mp4.

The data flows one way: timeline -> schedule -> conditioning -> streaming generator
(DiT + KV cache + memory bank) -> streaming VAE decode -> video file.
"""

__version__ = "0.1.0"
