"""desta_edge.streaming: audio sources, endpointing, the listening loop (`desta-edge listen`) and the
WebSocket server (`desta-edge serve`)."""
