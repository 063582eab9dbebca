"""Load weights you already have (torchvision, mmdet, effdet necks) into the matching fpn_zoo variant."""
