"""Live quality of AUTO predictions: outcomes (ground truth that arrives later), the
estimate of AUTO error from the uniform audit sample and outcomes with a confidence
sequence, and the alarm that holds a release to review when the task's bound is broken."""
