"""Metrics: accuracy, mIoU, depth errors, mCE, embedding drift, calibration, confidence intervals."""
