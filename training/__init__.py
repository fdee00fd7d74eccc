"""desta_edge.training — see README (planned in a later issue)."""
