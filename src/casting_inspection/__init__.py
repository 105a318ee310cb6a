"""Visual inspection of cast submersible-pump impellers: defective or ok, from a top-view photo."""

CLASS_NAMES = ("ok_front", "def_front")  # index = label; defective (1) is the positive class
SPLITS = ("train", "test")  # the official splits of the Kaggle archive
