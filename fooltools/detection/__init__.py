"""Object detectors (YOLO, Faster R-CNN) in Flax, their box utilities and attacks."""
