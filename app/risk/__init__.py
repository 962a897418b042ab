"""Risk control: a certified bound on the error rate among AUTO predictions (Learn-then-Test).

Plain functions on arrays, no database and no models: ``binomial`` holds the exact tests and
intervals, ``control`` the threshold search (fixed-sequence testing over a fixed grid) and the
stored calibration rows it runs on.
"""
