"""`casting-inspect station`: a camera stream in, one decision per part, signals to the line out."""
