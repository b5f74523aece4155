"""The inputs: timeline formats, the chunk schedule, conditioning, prompts and their cache, input videos
(video-to-video) and VACE inputs, and the limits and option checks every way in shares."""
