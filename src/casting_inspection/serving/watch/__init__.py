"""A folder a camera writes to: each complete photo decided once, logged, then filed by its decision."""
