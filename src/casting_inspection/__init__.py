"""Visual inspection of cast submersible-pump impellers: defective or ok, from a top-view photo.

The rooms, and the one way their imports point (see ARCHITECTURE.md):
core -> data -> modeling -> evaluation -> deploy; team (presets, pull-request report) drives the CLI tools.
"""

CLASS_NAMES = ("ok_front", "def_front")  # index = label; defective (1) is the positive class
SPLITS = ("train", "test")  # the official splits of the Kaggle archive
