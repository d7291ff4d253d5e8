"""torch.library ops (one file per math op): custom_op + register_fake + register_autograd, with the
backend chosen inside the op body by ttrl_fast.backends. Users call ttrl_fast.* instead."""
