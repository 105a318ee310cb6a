"""The photos: download, decode and check, prepare the splits and array cache, input drift. No torch in the
modules the serving path uses (images, drift, background)."""
