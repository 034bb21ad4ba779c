"""Estimators of per-datapoint ``log p(x)``: importance sampling, AIS, BDMC and the inference gaps, over one harness."""
