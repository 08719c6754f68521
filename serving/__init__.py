"""spinecast.serving: the torch-free predictor (`predictor`), batch scoring (`batch`), and the
BentoML HTTP service (`service`, request and response models in `schemas`). Imports nothing from
training."""
