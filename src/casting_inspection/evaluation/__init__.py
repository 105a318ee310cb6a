"""How good a trained model is: decision metrics, operating point, calibration, explanations, robustness to
line changes, and the HTML report."""
