"""desta_edge.streaming: audio sources, endpointing and the listening loop (`desta-edge listen`)."""
