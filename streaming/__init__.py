"""desta_edge.streaming — see README (planned in a later issue)."""
